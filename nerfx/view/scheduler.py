"""Which frame to render next, for every open page, and the rendering itself in bounded pieces.

Every page (client) has a camera, a display mode and the frame it shows. Its next frame is:
- `moving`: the camera changed since its last frame: a small frame, sized to keep the frame rate
  up (and to show a new viewpoint at once); such a frame is never cancelled (it is short), so the
  frame shown is at most one render behind the camera;
- `refine`: the camera has been still for `still_after` seconds and its frame is not yet at full
  size: the full canvas; a camera move cancels it;
- `refresh`: while training, a still camera's frame older than the refresh period, at the size
  the budget allows, so it follows the training weights.
Pages take turns: the one whose frame is oldest goes first, so two or three pages all get frames.
The crop box and the render's visibility are the same for every page: a change of either is a
view change of every page (as a camera move), and a hidden render is not rendered at all.
Nothing here knows viser: a page is a callback that receives a finished picture.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from nerfx.view.budget import RenderBudget
from nerfx.view.camera import ViewCamera
from nerfx.view.crop import Box, cropped
from nerfx.view.frames import MODES, FrameJob, FrameRequest, Renderable

PRIORITY = {"moving": 0, "refine": 1, "refresh": 2}


@dataclass
class Page:
    """One open page: its camera and what it was last shown."""

    send: Callable[[np.ndarray, FrameJob], None]   # shows a finished frame
    camera: ViewCamera | None = None
    mode: str = "rgb"
    version: int = 0              # bumped by each camera or mode change
    moved_at: float = 0.0
    shown_version: int = -1       # the version its frame shows
    refined_version: int = -1     # the version whose full-size frame it has had
    shown_at: float = 0.0         # when its frame was sent
    shown_weights: int = -1       # the training weights its frame shows
    job: FrameJob | None = None
    job_version: int = -1
    on_refined: list[Callable[[FrameJob], None]] = field(default_factory=list)


class FrameScheduler:
    """Frames for every page from one model, rendered `work(seconds)` at a time."""

    def __init__(self, model: Renderable, budget: RenderBudget | None = None,
                 still_after: float = 0.15):
        self.model, self.budget = model, budget or RenderBudget()
        self.still_after = still_after
        self.training = False
        self.weights = 0              # bumped by each training step
        self.pages: dict[int, Page] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()  # set when there may be work
        self.frames_sent = 0
        self.crop: Box | None = None
        self.hidden = False           # the render is hidden: nothing to render
        # (model, box, step scale) -> what renders it, for the latest model and box
        self._renderables: dict[tuple[int, Box | None, float], Renderable] = {}

    # -- what the pages report (any thread) ---------------------------------------------------
    def add_page(self, key: int, send: Callable[[np.ndarray, FrameJob], None]) -> Page:
        with self.lock:
            page = self.pages[key] = Page(send)
        return page

    def remove_page(self, key: int) -> None:
        with self.lock:
            self.pages.pop(key, None)

    def camera_changed(self, key: int, camera: ViewCamera, moving: bool = True) -> None:
        with self.lock:
            page = self.pages.get(key)
            if page is None:
                return
            page.camera, page.version = camera, page.version + 1
            page.moved_at = time.monotonic() if moving else 0.0
        self.wake.set()

    def set_mode(self, key: int, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; the viewer shows {', '.join(MODES)}")
        with self.lock:
            page = self.pages.get(key)
            if page is not None:
                page.mode, page.version, page.moved_at = mode, page.version + 1, 0.0
        self.wake.set()

    def set_crop(self, box: Box | None) -> None:
        """Renders only what lies in the box (None: everything), on every page."""
        with self.lock:
            if box == self.crop:
                return
            self.crop = box
            self._changed_all()
        self.wake.set()

    def set_hidden(self, hidden: bool) -> None:
        """Stops rendering while the render is hidden; shown again, every page gets a frame."""
        with self.lock:
            if hidden != self.hidden:
                self.hidden = hidden
                self._changed_all()
        self.wake.set()

    def _changed_all(self) -> None:
        for page in self.pages.values():
            page.version, page.moved_at = page.version + 1, 0.0

    def view_model(self, kind: str = "refine") -> Renderable:
        """The model as the pages show it: cropped to the crop box, if any; a moving camera's
        frames marched at the budget's coarser step."""
        base, box = self.model, self.crop
        scale = self.budget.moving_step_scale if kind == "moving" else 1.0
        key = (id(base), box, scale)
        if key not in self._renderables:
            if any(k[:2] != (id(base), box) for k in self._renderables):
                self._renderables.clear()          # a new model or box: drop the old ones
            self._renderables[key] = cropped(base, box, scale)
        return self._renderables[key]

    def request_refine(self, key: int, then: Callable[[FrameJob], None]) -> None:
        """A new full-size frame of the page's camera with the current weights; `then` gets its
        finished job (the snapshot button)."""
        with self.lock:
            page = self.pages.get(key)
            if page is not None:
                page.refined_version = -1
                page.on_refined.append(then)
        self.wake.set()

    # -- what to render ------------------------------------------------------------------------
    def next_kind(self, page: Page, now: float) -> str | None:
        if page.camera is None or self.hidden:
            return None
        if page.shown_version != page.version:
            return "moving"                  # a new viewpoint: a quick frame first
        if now - page.moved_at < self.still_after:
            return None                      # the camera is moving and its frame is current
        if page.refined_version != page.version:
            return "refine"
        if (self.training and page.shown_weights != self.weights
                and now - page.shown_at >= self.budget.refresh_seconds * 0.75):
            return "refresh"
        return None

    def pending(self) -> str | None:
        """The most urgent kind of frame any page waits for (None: nothing to do)."""
        now = time.monotonic()
        with self.lock:
            kinds = [k for p in self.pages.values() if (k := self.next_kind(p, now))]
            kinds += [p.job.request.kind for p in self.pages.values() if p.job is not None]
        return min(kinds, key=PRIORITY.__getitem__) if kinds else None

    def _pick(self, now: float) -> tuple[Page, FrameJob] | None:
        """The page to render for next and its job (continued, or new)."""
        with self.lock:
            pages = sorted(self.pages.values(), key=lambda p: p.shown_at)
            if self.hidden:                    # nothing shows: drop the frames under way
                for page in pages:
                    page.job = None
                return None
            for page in pages:
                job = page.job
                if job is not None and (page.job_version == page.version
                                        or job.request.kind == "moving"):
                    return page, job           # a moving frame is never cancelled
                page.job = None                # cancelled by a camera move or mode change
                kind = self.next_kind(page, now)
                if kind is None:
                    continue
                assert page.camera is not None
                height = self.budget.height(kind, page.camera, self.training)
                if kind == "refresh" and height >= min(page.camera.height, self.budget.cap):
                    kind = "refine"
                request = FrameRequest(page.camera, height, page.mode, kind)
                page.job = FrameJob(request, self.view_model(kind))
                page.job_version = page.version
                return page, page.job
        return None

    def work(self, seconds: float) -> float:
        """Renders for about `seconds` (at least one chunk when there is work); returns the
        seconds it took (encoding and sending included)."""
        start = time.perf_counter()
        elapsed = 0.0
        while True:
            if elapsed > 0 and elapsed >= seconds:
                return elapsed
            picked = self._pick(time.monotonic())
            if picked is None:
                return time.perf_counter() - start
            page, job = picked
            tick = time.perf_counter()
            kind = job.request.kind
            n = job.advance(self.budget.chunk_rays(max(seconds - elapsed, 1e-3), kind))
            self.budget.measured(n, time.perf_counter() - tick, kind)
            if job.finished:
                self._deliver(page, job)
            elapsed = time.perf_counter() - start

    def _deliver(self, page: Page, job: FrameJob) -> None:
        picture = job.picture()
        with self.lock:
            page.job = None
            current = page.job_version == page.version
            page.shown_version = page.job_version
            page.shown_at, page.shown_weights = time.monotonic(), self.weights
            full = job.height >= min(job.request.camera.height, self.budget.cap)
            callbacks = []
            if current and (full or job.request.kind == "refine"):
                page.refined_version = page.job_version
                callbacks, page.on_refined = page.on_refined, []
        try:
            page.send(picture, job)
        except Exception as exc:   # a page that went away mid-render: drop it, carry on
            warnings.warn(f"nerfx.view: a page stopped receiving frames ({exc!r})",
                          stacklevel=2)
            self.remove_page(next((k for k, p in self.pages.items() if p is page), -1))
            return
        self.frames_sent += 1
        for callback in callbacks:
            callback(job)
