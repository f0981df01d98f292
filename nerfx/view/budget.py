"""How much the viewer may render, and at what size.

While a model trains, the viewer renders between training steps and spends a budget earned by
training time: a frame that follows a moving camera may take `moving_share` of the wall time,
the sharp frame of a camera that has stopped `refine_share` (for the seconds it takes), the
periodic refresh of a still camera `still_share`. Credit is
a token bucket in seconds: each step adds its training time times share / (1 - share), each
chunk of rays takes the seconds it took (so an overshoot is paid back by the next steps), and
unused credit is capped so that a long idle spell never turns into a long stall.

A moving camera's frames are marched at twice the trained step (nerfx.view.crop), about 0.6 of
the time of a full frame, and their rays per second are measured apart from the others'. Frame
sizes follow the measured rays per second: a moving camera gets the height at which a frame fits
its share of `1 / moving_fps` seconds (never under `floor` pixels), a refresh the height at which
it fits its share of `refresh_seconds`, a still camera the full canvas (up to `cap`; while
training, the size that its share renders in `refine_seconds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nerfx.view.camera import ViewCamera
from nerfx.view.frames import height_for


@dataclass
class RenderBudget:
    moving_share: float = 0.33     # of wall time while a camera moves
    refine_share: float = 0.5      # of wall time while a stopped camera's sharp frame renders
    still_share: float = 0.05      # of wall time for refreshing still cameras
    moving_fps: float = 12.0       # frames a second wanted while a camera moves
    moving_step_scale: float = 2.0  # a moving camera's frames march this times the step
    refresh_seconds: float = 2.0   # a still camera's frame shows weights at most this old
    refine_seconds: float = 2.5    # while training, a still camera's sharp frame within this
    floor: int = 64                # pixels: the smallest frame height
    cap: int = 1024                # pixels: the largest frame height
    chunk_seconds: float = 0.03    # one uninterruptible piece of rendering
    max_credit: float = 0.25       # seconds of credit kept at most
    rays_per_second: float = 2e4   # measured as it renders (an exponential average)
    # The same for a moving camera's coarser frames (None: starts at rays_per_second).
    moving_rays_per_second: float | None = None
    credit: float = 0.0
    # Time spent rendering and training, for the numbers panel.
    spent: dict[str, float] = field(default_factory=lambda: {"render": 0.0, "train": 0.0})

    def earn(self, train_seconds: float, share: float) -> None:
        """A training step of train_seconds happened; credit for work at `share`."""
        self.spent["train"] += train_seconds
        self.credit = min(self.credit + train_seconds * share / (1 - share), self.max_credit)

    def spend(self, seconds: float) -> None:
        self.spent["render"] += seconds
        self.credit -= seconds

    def __post_init__(self) -> None:
        if self.moving_rays_per_second is None:
            self.moving_rays_per_second = self.rays_per_second

    def rate(self, kind: str) -> float:
        """Rays a second for frames of this kind (a moving camera's march is the coarser)."""
        return self.moving_rays_per_second if kind == "moving" else self.rays_per_second

    def measured(self, n_rays: int, seconds: float, kind: str = "refine") -> None:
        """A chunk of n_rays of a frame of this kind took `seconds`: update its rays/s."""
        if n_rays >= 256 and seconds > 0:
            rate, old = n_rays / seconds, self.rate(kind)
            # Falls fast, rises slowly: rays differ (empty ones are cheap), and an estimate too
            # high makes the next chunk overrun its time.
            new = old + (0.5 if rate < old else 0.1) * (rate - old)
            if kind == "moving":
                self.moving_rays_per_second = new
            else:
                self.rays_per_second = new

    def chunk_rays(self, seconds: float | None = None, kind: str = "refine") -> int:
        """Rays of a frame of this kind that take about min(seconds, chunk_seconds)."""
        seconds = self.chunk_seconds if seconds is None else min(seconds, self.chunk_seconds)
        return int(min(max(self.rate(kind) * seconds, 512), 2**16))

    def share(self, kind: str, training: bool) -> float:
        if not training:
            return 1.0
        return {"refresh": self.still_share, "refine": self.refine_share}.get(
            kind, self.moving_share)

    def height(self, kind: str, camera: ViewCamera, training: bool) -> int:
        """The frame height for a request of this kind."""
        if kind == "refine":
            if not training:
                return min(camera.height, self.cap)
            # While training: the size whose frame its share renders in refine_seconds.
            seconds = self.refine_seconds * self.share(kind, training)
        elif kind == "moving":
            seconds = self.share(kind, training) / self.moving_fps
        else:   # refresh: its share of the refresh period
            seconds = self.refresh_seconds * 0.6 * self.share(kind, training)
        return height_for(camera, self.rate(kind) * seconds, self.floor, self.cap)

    def render_share(self) -> float:
        """The fraction of time spent rendering for the viewer so far."""
        total = self.spent["render"] + self.spent["train"]
        return self.spent["render"] / total if total else 0.0
