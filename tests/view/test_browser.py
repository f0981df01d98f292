"""The viewer in a real browser (headless Chromium), used as a person uses it: load the page,
look at its pixels, drag the camera, click the buttons; and the commands' answers to bad input."""

from __future__ import annotations

import os
import shutil
import socket
import time

import numpy as np
import pytest
import torch

from nerfx.metrics import psnr
from nerfx.models.pipelines import load_pipeline
from nerfx.render.views import render_view
from tests.view.conftest import TINY_TRAIN, Viewer

# The part of a 640 x 400 page that only the render covers once the panel is minimised: below
# the panel's header, right of the axes gizmo.
REGION = (slice(60, 340), slice(60, 580))


def reference(run, pose: dict) -> np.ndarray:
    """nerfx.render's picture of the pose the page reports, uint8 [H, W, 3]."""
    pipeline, _ = load_pipeline(run)
    intrinsics = torch.tensor([pose["fl_x"], pose["fl_y"], pose["cx"], pose["cy"]])
    rgb = render_view(pipeline, torch.tensor(pose["transform_matrix"]), intrinsics,
                      pose["w"], pose["h"], torch.ones(3))[0]
    return (rgb.numpy() * 255 + 0.5).astype(np.uint8)


def region_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return psnr(torch.tensor(a[REGION] / 255.0), torch.tensor(b[REGION] / 255.0))


@pytest.mark.slow
def test_view_shows_the_render_of_the_browser_camera(trained_run, command, browser, tmp_path):
    cmd = command("nerfx.view", str(trained_run), "--port", "0")
    page = Viewer(browser, cmd.url())
    pose = page.wait_for_pose()
    assert (pose["w"], pose["h"]) == (640, 400)
    screenshot_dir = os.environ.get("NERFX_SCREENSHOT_DIR")
    if screenshot_dir:                                   # the README's picture
        page.close_notifications()
        page.page.screenshot(path=os.path.join(screenshot_dir, "viewer.png"))
    page.clear_view()
    time.sleep(1.0)
    shown = page.screenshot()
    assert shown.shape == (400, 640, 3)
    expected = reference(trained_run, pose)
    assert region_psnr(shown, expected) >= 28.0          # nerfx's render, not just pixels
    assert region_psnr(shown, np.full_like(shown, 255)) < 28.0   # and not a blank page

    page.drag(60, 20)                                    # orbit the camera
    page.expand_panel()
    moved = page.wait_for_pose(different_from=pose, timeout=180)
    assert not np.allclose(moved["transform_matrix"], pose["transform_matrix"])
    page.page.get_by_label("Minimize panel").click()
    time.sleep(1.0)
    after = page.screenshot()
    page.expand_panel()
    assert page.pose() == moved                          # the frame compared is that pose's
    assert region_psnr(after, reference(trained_run, moved)) >= 28.0
    assert region_psnr(after, shown) < region_psnr(after, reference(trained_run, moved))

    page.page.get_by_role("button", name="Snapshot").click()
    end = time.monotonic() + 120
    while time.monotonic() < end and not list((trained_run / "snapshots").glob("*.png")):
        time.sleep(0.3)
    snaps = list((trained_run / "snapshots").glob("*.png"))
    assert len(snaps) == 1 and snaps[0].stat().st_size > 0
    assert page.outside == []                            # no request left this machine
    page.close()
    assert cmd.interrupt() == 0
    assert "Traceback" not in cmd.stderr()


@pytest.mark.slow
def test_train_view_live(command, browser, view_data):
    cmd = command("nerfx.train", *TINY_TRAIN, "--steps", "100000", "--max-seconds", "900",
                  "--batch-rays", "64", "--out", str(view_data / "live"), "--view",
                  "--port", "0")
    url = cmd.url()
    page = Viewer(browser, url)
    page.wait_for_pose(full=False)                       # frames come while it trains
    wait_until(lambda: page.step() >= 0)                 # the numbers show (a loaded machine
    first = page.step()                                  # may show frames first)
    wait_until(lambda: page.step() > first)
    assert page.step() > first >= 0                     # the counter advances

    page.page.get_by_role("button", name="Pause training").click()
    time.sleep(3.0)                                      # the step under way finishes
    paused = page.step()
    time.sleep(3.0)
    assert page.step() == paused and "(paused)" in page.text()
    page.page.get_by_role("button", name="Resume training").click()
    wait_until(lambda: page.step() > paused)
    assert page.step() > paused

    second = Viewer(browser, url)                        # a second page, gone mid-render
    second.drag(80, 0)
    second.close()
    before = page.step()
    wait_until(lambda: page.step() > before)
    assert page.step() > before                          # training goes on
    page.close()
    assert cmd.interrupt() == 130                        # Ctrl-C while training
    assert "Traceback" not in cmd.stderr()


@pytest.mark.slow
def test_the_page_stays_after_training(command, browser, view_data):
    cmd = command("nerfx.train", *TINY_TRAIN, "--steps", "3", "--batch-rays", "64",
                  "--out", str(view_data / "done"), "--view", "--port", "0")
    url = cmd.url()
    cmd.wait_for("training done; the viewer stays at", timeout=600)
    page = Viewer(browser, url)
    shown = page.wait_for_pose(full=False)
    page.drag(-100, 0)
    moved = page.wait_for_pose(different_from=shown, timeout=120, full=False)
    assert not np.allclose(moved["transform_matrix"], shown["transform_matrix"])
    page.close()
    assert cmd.interrupt() == 0
    assert "Traceback" not in cmd.stderr()


def red_share(picture: np.ndarray) -> float:
    """The share of the region's pixels that are red (the test's mesh)."""
    r, g, b = (picture[REGION][..., i].astype(int) for i in range(3))
    return float(((r > 100) & (r > 2 * g) & (r > 2 * b)).mean())


@pytest.mark.slow
def test_a_mesh_in_the_run_folder_shows_in_the_page(trained_run, command, browser, tmp_path):
    """A mesh written into the run folder (as python -m nerfx.export does, in the dataset's
    coordinates) gets a toggle, hidden at first; shown, with the render hidden, its pixels are
    on the page where the scene is. The crop box's corners show when the crop is on."""
    import trimesh
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    box.visual.vertex_colors = np.tile(np.uint8([[230, 20, 20, 255]]), (len(box.vertices), 1))
    (run / "mesh.ply").write_bytes(trimesh.exchange.ply.export_ply(box))
    cmd = command("nerfx.view", str(run), "--port", "0")
    page = Viewer(browser, cmd.url())
    page.wait_for_pose()
    toggle = page.page.get_by_label("mesh.ply (12 faces)", exact=True)
    assert not toggle.is_checked()
    crop_min = page.page.get_by_text("Crop min", exact=True)
    assert not crop_min.is_visible()
    page.page.get_by_label("Crop", exact=True).check()
    crop_min.wait_for(state="visible", timeout=10_000)
    page.page.get_by_label("Crop", exact=True).uncheck()
    page.page.get_by_label("Render", exact=True).uncheck()
    page.clear_view()
    time.sleep(1.0)
    assert red_share(page.screenshot()) < 0.001          # neither the render nor the mesh
    page.expand_panel()
    toggle.check()
    page.page.get_by_label("Minimize panel").click()
    time.sleep(1.0)
    shown = page.screenshot()
    assert red_share(shown) > 0.02                       # the mesh, over the page's background
    reds = shown[REGION][(shown[REGION][..., 0] > 100) & (shown[REGION][..., 1] < 100)]
    # its own colour, unlit (viser's tone mapping bends it a little)
    np.testing.assert_allclose(np.median(reds, 0), [230, 20, 20], atol=30)
    assert page.outside == []
    page.close()
    assert cmd.interrupt() == 0
    assert "Traceback" not in cmd.stderr()


def wait_until(condition, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.5)


def test_view_of_a_missing_run_says_so(command, tmp_path):
    cmd = command("nerfx.view", str(tmp_path / "nothing"))
    assert cmd.process.wait(120) == 1
    err = cmd.stderr().strip()
    assert "Traceback" not in err and err.endswith("not a nerfx run folder (config.json missing)")


@pytest.mark.slow
def test_view_of_a_run_without_checkpoint_says_so(trained_run, command, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoint.pt").unlink()
    cmd = command("nerfx.view", str(run))
    assert cmd.process.wait(120) == 1
    assert "Traceback" not in cmd.stderr() and "no checkpoint" in cmd.stderr()


@pytest.mark.slow
def test_a_taken_port_and_an_open_host_are_announced(trained_run, command):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = command("nerfx.view", str(trained_run), "--port", str(port))
        cmd.wait_for(rf"port {port} is in use; took \d+")
        assert f":{port} " not in cmd.url()
        assert cmd.interrupt() == 0
    cmd = command("nerfx.view", str(trained_run), "--port", "0", "--host", "0.0.0.0")
    cmd.url()
    assert cmd.interrupt() == 0
    assert "no authentication" in cmd.stderr() and "Traceback" not in cmd.stderr()
