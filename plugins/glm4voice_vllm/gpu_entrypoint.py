"""Make the vLLM general plugin discoverable where the project is not pip-installed (the GPU machine).

vLLM finds general plugins through `importlib.metadata.entry_points(group="vllm.general_plugins")`, and it
looks them up again in every process it spawns (engine core, workers). Putting the repository on
PYTHONPATH makes the code importable but declares no entry point, so the spawned engine core would not
register `Glm4VoiceForCausalLM` and would fail on the architecture name. A `*.dist-info` folder with an
`entry_points.txt`, lying in any directory on sys.path, is enough for importlib.metadata to see one.

On the GPU machine (see ../shared/gpu/README.md; /tmp/site is already on PYTHONPATH there), once per
machine, from the repository root:

    export PYTHONPATH=$PYTHONPATH:$PWD/plugins    # glm4voice_vllm lives in plugins/, not at the root
    python3 plugins/glm4voice_vllm/gpu_entrypoint.py /tmp/site

Both directories must be on PYTHONPATH of the process that starts vLLM, so that the spawned processes
inherit them. On a machine where the project is pip-installed (`pip install -e .`) none of this is needed:
pyproject.toml declares the same entry point. Only the standard library is used, so the script runs
before anything else is importable.
"""

from __future__ import annotations

import sys
from pathlib import Path

DIST_NAME = "glm4voice_vllm"
DIST_VERSION = "0.1.0"
ENTRY_POINTS = "[vllm.general_plugins]\nglm4voice = glm4voice_vllm:register\n"


def plugins_dir() -> Path:
    """The directory that must be on PYTHONPATH for `import glm4voice_vllm` (the repository's plugins/)."""
    return Path(__file__).resolve().parent.parent


def write_dist_info(site_dir: str | Path) -> Path:
    """Write (or overwrite) `glm4voice_vllm-0.1.0.dist-info` with METADATA and entry_points.txt into site_dir."""
    dist_info = Path(site_dir) / f"{DIST_NAME}-{DIST_VERSION}.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {DIST_VERSION}\n"
        "Summary: GLM-4-Voice vLLM general plugin (entry point only; the code is on PYTHONPATH)\n"
    )
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    (dist_info / "top_level.txt").write_text(f"{DIST_NAME}\n")
    return dist_info


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python3 {Path(__file__).name} SITE_DIR   (a directory on PYTHONPATH)")
    print(write_dist_info(sys.argv[1]))
