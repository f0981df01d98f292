"""The browser viewer (viser): a page that shows nerfx's render of its camera, of a finished run
(`python -m nerfx.view RUN`) or while a model trains (`python -m nerfx.train --view`).

server.py    the viser server, pages, the training observer and the render thread
scheduler.py which frame each page gets next, rendered in bounded pieces
budget.py    how much time rendering may take while training, and the frame sizes
frames.py    one frame rendered chunk by chunk; its picture per display mode
panels.py    the controls and the numbers
scene.py     training cameras, scene box, occupied cells, crop box, geometry files
crop.py      the crop box: a pipeline rendered inside a box only
geometry.py  exported meshes and point clouds, loaded in the run's coordinates and capped
camera.py    the browser camera <-> nerfx poses; pose JSON
sources.py   the viewer's scene from a run folder or a training task
"""

from __future__ import annotations

from nerfx.runs import RunError
from nerfx.view.budget import RenderBudget
from nerfx.view.camera import ViewCamera
from nerfx.view.frames import MODES, FrameJob, FrameRequest
from nerfx.view.scene import ViewScene
from nerfx.view.scheduler import FrameScheduler


class ViewerUnavailable(RunError):
    """viser is not installed."""


def require_viser() -> None:
    """Raises ViewerUnavailable with the fix when the `view` extra is missing."""
    try:
        import viser  # noqa: F401
    except ImportError:
        raise ViewerUnavailable("the viewer needs viser: pip install 'nerfx[view]' "
                                "(or pip install -e '.[view]' in a checkout)") from None


def open_viewer(*args, **kwargs):
    """nerfx.view.server.Viewer(*args, **kwargs), with a clear error without viser."""
    require_viser()
    from nerfx.view.server import Viewer
    return Viewer(*args, **kwargs)


__all__ = ["MODES", "FrameJob", "FrameRequest", "FrameScheduler", "RenderBudget", "ViewCamera",
           "ViewScene", "ViewerUnavailable", "open_viewer", "require_viser"]
