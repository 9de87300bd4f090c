"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): Zalando clothing images in MNIST's format.

Reads <data_dir>/FashionMNIST/raw/ with the IDX reader from `mnist.py`. 55,000 train / 5,000 val
/ 10,000 test; 1x28x28; 10 balanced classes. Augmentation off by default (augment=True: random
crop with 2 px padding plus horizontal flips, which clothes survive). Registered as 'fashion_mnist'.

    python train.py fit --data fashion_mnist --model resnet20
"""
from datamodules.mnist import MNISTDataModule


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: 55,000 train / 5,000 val / 10,000 test, 1x28x28, 10 classes."""

    name = "fashion_mnist"
    class_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
    pad = 2
    flip = True
    folder = "FashionMNIST"

    def fetch(self) -> None:
        import torchvision  # only needed for downloading

        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(self.data_dir), train=train, download=True)
