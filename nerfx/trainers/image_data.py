"""The data of every image-model trainer: its training and test sets, as its settings say."""

from __future__ import annotations

from nerfx.data import ImageDataset, load_image_dataset


def load_image_data(config: dict) -> tuple[ImageDataset, ImageDataset]:
    """-> (train, test) of config["data"] at settings' image_size, train_images and
    test_images; records the classes and the image shape in config."""
    settings = config["settings"]
    train, test = (load_image_dataset(config["data"], split, size=settings.get("image_size"),
                                      seed=config["seed"], n=settings.get(f"{split}_images"))
                   for split in ("train", "test"))
    config["classes"] = list(train.classes)
    config["image_shape"] = list(train.images.shape[1:])
    return train, test
