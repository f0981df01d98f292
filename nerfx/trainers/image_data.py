"""The data of every image-model trainer: its training and test sets, as its settings say, and
the training batches (a fixed set's seeded epochs, or fresh procedural images, augmented).

Settings read here (absent ones keep the behaviour runs had before them):
    image_size, train_images, test_images   the sets' image side and sizes
    fresh_images   True: on procedural data (`shapes`), every training image is new, drawn from
                   the endless training stream as training goes; other data use their train split
    crop_scale     (lo, hi): random resized crop's area fraction (DeiT; (1, 1) is no crop)
    flips          True: the flips that keep the dataset's classes (nerfx.data.augment)
    prefetch       n > 0: a background thread makes the next n batches while the model trains
                   on this one (the same batches in the same order; drawing and augmenting them
                   is about 7 % of a fast ViT step on one core)
"""

from __future__ import annotations

import queue
import threading

import torch

from nerfx import distributed
from nerfx.data import ImageDataset, load_image_dataset, parse_image_spec
from nerfx.data.augment import Augmentation, augmentation_for
from nerfx.data.shapes import SHAPE_CLASSES, make_shapes, shapes_seed
from nerfx.loop import BatchStream


def fresh(config: dict) -> bool:
    """Whether the run draws fresh training images (fresh_images on procedural data)."""
    return bool(config["settings"].get("fresh_images")) and \
        parse_image_spec(config["data"]).kind == "shapes"


def load_image_data(config: dict) -> tuple[ImageDataset, ImageDataset]:
    """-> (train, test) of config["data"] at settings' image_size, train_images and
    test_images; records the classes and the image shape in config. With fresh images the
    train set is empty (FreshShapes draws them) but for its classes and shape."""
    settings = config["settings"]
    train, test = (load_image_dataset(config["data"], split, size=settings.get("image_size"),
                                      seed=config["seed"],
                                      n=0 if split == "train" and fresh(config)
                                      else settings.get(f"{split}_images"))
                   for split in ("train", "test"))
    config["classes"] = list(train.classes)
    config["image_shape"] = list(train.images.shape[1:])
    return train, test


class FreshShapes:
    """Endless training batches of new `shapes` images: global batch k is images
    [k * B * W, (k + 1) * B * W) of the training stream (make_shapes under the train seed; its
    first images are the fixed train split's), each of the W processes drawing its own slice.
    The same seed gives the same images; none repeats, none is a test image. The state is
    BatchStream's (epoch, position), the position counting global images."""

    def __init__(self, size: int, batch_size: int, seed: int, device: torch.device,
                 value_range: tuple[float, float] = (-1.0, 1.0)):
        self.size, self.batch_size, self.seed = size, batch_size, shapes_seed("train", seed)
        self.global_batch, self.rank = batch_size * distributed.world_size(), distributed.rank()
        self.device, self.value_range = device, value_range
        self.epoch, self.position = 0, 0
        self.classes = SHAPE_CLASSES

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (images [B, 3, size, size] float in value_range, labels [B]) on the device."""
        start = self.position + self.rank * self.batch_size      # this process's slice
        images, labels = make_shapes(self.batch_size, self.size, self.seed, start=start)
        self.position += self.global_batch
        batch = ImageDataset(images, labels, self.classes)
        return (batch.as_float(self.value_range).to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class AugmentedBatches:
    """Batches of a stream (BatchStream or FreshShapes) through an Augmentation. The random
    numbers of a global batch come from a generator seeded by the run's seed and the batch's
    place in the stream, each process taking its slice: a resumed run and a run on W processes
    augment as one straight run does, with no generator state to save."""

    def __init__(self, stream: BatchStream | FreshShapes, augmentation: Augmentation,
                 seed: int):
        self.stream, self.augmentation, self.seed = stream, augmentation, seed

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (augmented images [B, C, H, W], labels [B]) on the stream's device."""
        images, labels = self.stream.next()
        if self.augmentation.identity:
            return images, labels
        key = (self.seed * 1_000_003 + self.stream.epoch) * 1_000_003 + self.stream.position
        draws = self.augmentation.draw(self.stream.global_batch,
                                       torch.Generator().manual_seed(key % 2**63))
        b = self.stream.batch_size
        return self.augmentation(images, draws=draws[self.stream.rank * b:][:b]), labels

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


class Prefetched:
    """The batches of an AugmentedBatches, made `depth` ahead by a background thread (numpy and
    torch release the GIL while they draw and resample). The same batches in the same order; the
    state is the inner stream's after the last batch handed out, so resume is unchanged."""

    def __init__(self, inner: AugmentedBatches, depth: int = 2):
        self.inner, self.depth = inner, depth
        self.stream, self.augmentation = inner.stream, inner.augmentation
        self._state = inner.state_dict()
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _work(self, out: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            item = self.inner.next()
            out.put((item, self.inner.state_dict()))

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (augmented images [B, C, H, W], labels [B]): the inner stream's next batch."""
        if self._thread is None:
            self._queue, self._stop = queue.Queue(self.depth), threading.Event()
            self._thread = threading.Thread(target=self._work, args=(self._queue, self._stop),
                                            daemon=True)
            self._thread.start()
        item, self._state = self._queue.get()
        return item

    def close(self) -> None:
        """Stop the thread (batches made ahead are dropped; the state stays the last handed)."""
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.01)          # unblock a waiting put
                except queue.Empty:
                    pass
            self._thread = None
            self.inner.load_state_dict(self._state)

    def state_dict(self) -> dict:
        return dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.inner.load_state_dict(state)
        self._state = self.inner.state_dict()


def training_batches(config: dict, train: ImageDataset, batch_size: int, device: torch.device,
                     value_range: tuple[float, float] = (-1.0, 1.0)
                     ) -> AugmentedBatches | Prefetched:
    """The run's training batches: fresh shapes or the train set's seeded epochs, through the
    settings' crop and the flips the dataset allows, made ahead when prefetch is set."""
    settings, seed = config["settings"], config["seed"]
    stream = (FreshShapes(train.resolution, batch_size, seed, device, value_range)
              if fresh(config) else BatchStream(train, batch_size, seed, device, value_range))
    augmentation = augmentation_for(config["data"], tuple(settings.get("crop_scale", (1, 1))),
                                    flips=bool(settings.get("flips", False)))
    batches = AugmentedBatches(stream, augmentation, seed)
    depth = int(settings.get("prefetch", 0))
    return Prefetched(batches, depth) if depth > 0 else batches
