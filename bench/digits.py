"""The workload most suites share: the shipped digits CNN and the first test digits."""
import torch

from saliency_fast.data import load_digits
from saliency_fast.models import digits_cnn


def digits_work(count: int = 64):
    """(model, images, target): the shipped DigitsCNN, the first ``count`` test digits and the
    classes the model predicts for them."""
    model = digits_cnn()
    images = load_digits("test")[0][:count].contiguous()
    with torch.no_grad():
        target = model(images).argmax(1)
    return model, images, target
