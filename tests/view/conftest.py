"""What the viewer's tests share: a tiny trained run, the commands run as a user runs them (a
subprocess, stopped with Ctrl-C), and a headless Chromium driven through Playwright."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN = ["--scene", "lego", "--fast", "--downscale", "100", "--eval-views", "1",
              "--video-frames", "0", "--device", "cpu"]
URL = re.compile(r"at (http://\S+) \(Ctrl-C to stop\)")


@pytest.fixture(scope="session")
def view_data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("view-data")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, view_data) -> Path:
    """A run of 20 tiny steps (8 x 8 images), trained once for the session; or a copy of the
    run folder $NERFX_VIEW_TEST_RUN (a better-trained one, for the README's screenshot)."""
    run = tmp_path_factory.mktemp("view-run") / "run"
    if os.environ.get("NERFX_VIEW_TEST_RUN"):
        shutil.copytree(os.environ["NERFX_VIEW_TEST_RUN"], run)
        return run
    subprocess.run([sys.executable, "-m", "nerfx.train", *TINY_TRAIN, "--steps", "20",
                    "--batch-rays", "256", "--out", str(run)], check=True, cwd=ROOT,
                   env=command_env(view_data), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=600)
    return run


def command_env(data: Path) -> dict:
    return {**os.environ, "NERFX_DATA": str(data), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT)}


class Command:
    """A command line running in the background; its output collected as it comes."""

    def __init__(self, args: list[str], data: Path):
        self.process = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT,
                                        env=command_env(data), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(target=_collect, args=(stream, lines), daemon=True).start()

    def wait_for(self, pattern: str | re.Pattern, timeout: float = 300) -> re.Match:
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.out):
                if match := pattern.search(line):
                    return match
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern.pattern!r} in the output: {self.out} {self.err}")

    def url(self) -> str:
        return self.wait_for(URL).group(1)

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, as a user stops it; -> the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def stderr(self) -> str:
        return "".join(self.err)


def _collect(stream, lines: list[str]) -> None:
    for line in iter(stream.readline, ""):
        lines.append(line)


@pytest.fixture
def command(view_data):
    started: list[Command] = []

    def start(*args: str) -> Command:
        started.append(Command(list(args), view_data))
        return started[-1]
    yield start
    for cmd in started:
        if cmd.process.poll() is None:
            cmd.process.kill()
            cmd.process.wait()


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian's chromium package; .ci/run installs it)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--enable-unsafe-swiftshader"])
        yield chromium
        chromium.close()


class Viewer:
    """One page of the viewer, as a person uses it."""

    def __init__(self, browser, url: str, width: int = 640, height: int = 400):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.outside: list[str] = []            # requests that would leave this machine
        self.page.route("**/*", self._local_only)
        # A fixed pixel ratio: viser's client lowers it (and the size of the frames it asks for)
        # while its WebGL runs slowly, as software WebGL on a loaded machine does; the frames'
        # sizes and pixels compared here are those of the page at its full resolution.
        self.page.goto(f"{url}/?fixedDpr=1")
        self.page.get_by_text("Connected").wait_for(timeout=120_000)

    def _local_only(self, route) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def pose(self) -> dict:
        row = self.page.locator(".mantine-Flex-root",
                                has=self.page.get_by_text("Pose (JSON)", exact=True))
        return json.loads(row.locator("textarea").first.input_value(timeout=5000))

    def wait_for_pose(self, different_from: dict | None = None, timeout: float = 180,
                      full: bool = True) -> dict:
        """The pose box shows the camera of each frame that arrives, with its size; full: wait
        for a frame at the page's size."""
        size = self.page.viewport_size
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pose = self.pose()
            if (pose and pose != different_from and (not full or (pose["w"], pose["h"])
                                                     == (size["width"], size["height"]))):
                return pose
            time.sleep(0.3)
        raise AssertionError("no frame of a still camera arrived")

    def text(self) -> str:
        return self.page.inner_text("body")

    def step(self) -> int:
        match = re.search(r"step (\d+)", self.text())
        return int(match.group(1)) if match else -1

    def clear_view(self) -> None:
        """Hides what lies over the render: the overlays, the notification, the panel."""
        for label in ("Training cameras", "Scene box"):
            self.page.get_by_label(label).uncheck()
        self.close_notifications()
        self.page.get_by_label("Minimize panel").click()

    def close_notifications(self) -> None:
        for button in self.page.locator(".mantine-Notification-closeButton").all():
            button.click()

    def expand_panel(self) -> None:
        self.page.get_by_label("Expand panel").click()

    def screenshot(self) -> np.ndarray:
        from io import BytesIO

        from PIL import Image
        return np.asarray(Image.open(BytesIO(self.page.screenshot())).convert("RGB"))

    def drag(self, dx: int, dy: int) -> None:
        """A mouse drag on the canvas, from left of the panel."""
        box = self.page.locator("canvas").first.bounding_box()
        x, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        for i in range(1, 11):
            self.page.mouse.move(x + dx * i / 10, y + dy * i / 10)
            time.sleep(0.03)
        self.page.mouse.up()

    def close(self) -> None:
        self.page.close()
