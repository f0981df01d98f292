"""Taking a trained radiance field out of nerfx: meshes (marching cubes over the density),
point clouds (training rays at their expected depth) and cameras (transforms.json), in the
dataset's world coordinates; and the accuracy of a mesh against a scene with known depth.

    from nerfx.export import mesh
    pipeline, config = load_pipeline(run)                  # nerfx.models.pipelines
    m = mesh(pipeline, resolution=256, frame=scene_frame(config["scene"]))
    m.vertices, m.faces, m.colors, m.normals               # numpy, dataset coordinates

The command line is `python -m nerfx.export {mesh,pointcloud,cameras} RUN --out PATH`.
"""

from nerfx.export.cameras import cameras_json
from nerfx.export.density import ExportError, RadianceField, radiance_field
from nerfx.export.frame import SceneFrame, scene_frame
from nerfx.export.mesh import Mesh, mesh, mesh_bytes
from nerfx.export.points import pointcloud, pointcloud_bytes

__all__ = ["ExportError", "Mesh", "RadianceField", "SceneFrame", "cameras_json", "mesh",
           "mesh_bytes", "pointcloud", "pointcloud_bytes", "radiance_field", "scene_frame"]
