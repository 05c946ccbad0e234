#pragma once
// The ordering of every selection (samp_step, saliency_budget; CPU and CUDA): the key rule
// order_key, and order-preserving unsigned bit patterns of the keys: a < b as floats ⇔
// to_ordered(a) < to_ordered(b) as integers (sign flip for positives, bit flip for negatives),
// for keys without NaN and −0, which order_key removes. Selections then work on integers: a
// radix digit is a bucket, an exact key is a bit pattern.
#include <cstring>
#include <limits>

#include "macros.h"

namespace saliency_fast {

// The key rule, the one place it is written: NaN would break the strict weak order that a
// selection relies on, so it ranks last (+inf); −0 becomes +0 (x + 0 is x, except −0 + 0 = +0)
// so that bit-pattern order and `==` agree on ties. _reference._order_key is its PyTorch twin.
template <typename T>
SF_HOST_DEVICE T order_key(T v) {
  const T key = v + T(0);
  return key != key ? std::numeric_limits<T>::infinity() : key;
}

template <typename T>
struct OrderedBits;

template <>
struct OrderedBits<float> {
  using U = unsigned int;
  static constexpr int kBits = 32;
};

template <>
struct OrderedBits<double> {
  using U = unsigned long long;
  static constexpr int kBits = 64;
};

template <typename T>
SF_HOST_DEVICE typename OrderedBits<T>::U to_ordered(T v) {
  using U = typename OrderedBits<T>::U;
  U u;
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) == 4) {
    u = __float_as_uint(v);
  } else {
    u = static_cast<U>(__double_as_longlong(v));
  }
#else
  std::memcpy(&u, &v, sizeof(U));
#endif
  // Branch-free (a data-dependent branch on the sign mispredicts half the time on CPU):
  // negative → all bits flipped, positive → sign bit set.
  const U sign = U(1) << (OrderedBits<T>::kBits - 1);
  return u ^ ((U(0) - (u >> (OrderedBits<T>::kBits - 1))) | sign);
}

template <typename T>
SF_HOST_DEVICE T from_ordered(typename OrderedBits<T>::U u) {
  using U = typename OrderedBits<T>::U;
  const U sign = U(1) << (OrderedBits<T>::kBits - 1);
  u = (u & sign) ? (u & ~sign) : ~u;
  T v;
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) == 4) {
    v = __uint_as_float(u);
  } else {
    v = __longlong_as_double(static_cast<long long>(u));
  }
#else
  std::memcpy(&v, &u, sizeof(T));
#endif
  return v;
}

}  // namespace saliency_fast
