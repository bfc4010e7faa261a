"""``RenderConfig``: every setting of one render, as the CLI, a Prefect deployment or job.json give it.

Method options live in ``options`` (a dict checked against the method's declared ``Option``s,
``methods.base``), so a new method adds no field here. ``device`` is a spec (``auto``, ``cpu``,
``cuda[:N]``) resolved where the work runs; ``precision`` and ``batch`` left at None take that
device's defaults (``pipeline.device``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from pipeline.delivery import Delivery
from pipeline.errors import InputError
from pipeline.shots import ShotParams
from pipeline.storage import S3Config

DEFAULT_STYLE = "starry_night"
DEFAULT_METHOD = "per-frame"
#: What ``restyle`` renders with unless told otherwise: it reuses the flow cache.
RESTYLE_METHOD = "flow-blend"


@dataclass
class RenderConfig:
    input: str
    output: str
    style: str = DEFAULT_STYLE
    method: str = DEFAULT_METHOD
    options: dict = field(default_factory=dict)  # the method's options (methods.base.Option); defaults omitted
    width: int = 640  # working width: the net runs at this size
    style_scale: float = 1.0  # stroke size: the net runs at width / style_scale, resized back (NetRunner)
    exposure: str = "follow"  # follow: the source's exposure on the output (pipeline.exposure); net: the net's level
    out_width: int | None = None  # delivery width; None keeps the source's display width
    chunk_frames: int = 48
    upscaler: str = "lanczos"
    crf: int = 18
    preset: str = "medium"
    encoder: str = "auto"  # auto | software | nvenc (pipeline.hw_encode), resolved with the device
    codec: str = "h264"  # pipeline.delivery: h264 h265 prores ffv1, or png tiff exr (a folder of images)
    bit_depth: int | None = None  # None: the codec's default
    color: str = "source"  # source (the film's own tags), bt709 or bt2020 (converted)
    device: str = "auto"  # auto | cpu | cuda[:N], resolved where the work runs
    precision: str | None = None  # fp32 | bf16 | fp16; None: the device's default
    batch: int | None = None  # frames per net call; None: the device's default
    detector: str = "adaptive"
    threshold: float | None = None
    min_shot_frames: int = 15
    flow_backend: str = "dis"
    # DIS preset. fast, not medium: the same stability and style within 3% on Sintel (ground-truth
    # flow) and two of three real clips, 15% more warping error on the fast motion of PySceneDetect's
    # test video (0.46x per-frame's against 0.40x), for a fifth of DIS's time (8 ms a 640x360 pair
    # against 45 on one core); README "Benchmarks", temporal_quality's ~PRESET runs of 2026-12-07.
    flow_preset: str = "fast"
    flow_cache: str | None = None  # URI (folder or s3://); default: CACHE/flow, or beside an s3:// output
    soft_mask: bool = False
    workdir: str | None = None  # URI; default: CACHE/work/KEY, or beside an s3:// output
    cache_dir: str | None = None  # node-local cache root (downloads, shots, mezzanines)
    keep_work: bool = False
    threads: int | None = None  # torch threads (local engine) or per stylizer actor (Ray engine)
    report: str | None = None  # default: OUTPUT.report.json
    # S3 settings over the environment's (FILMSTYLE_S3_*, AWS_*); None keeps the environment's.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_profile: str | None = None
    s3_checksum: str | None = None  # when_required | when_supported

    def delivery(self) -> Delivery:
        """What the render writes (one clear error for a codec, depth or colour it cannot)."""
        return Delivery(codec=self.codec, bit_depth=self.bit_depth, color=self.color, crf=self.crf,
                        preset=self.preset, encoder="software" if self.encoder == "auto" else self.encoder)

    def shot_params(self) -> ShotParams:
        return ShotParams(detector=self.detector, threshold=self.threshold, min_shot_frames=self.min_shot_frames)

    def flow_backend_params(self) -> dict:
        return {"preset": self.flow_preset} if self.flow_backend == "dis" else {}

    def s3_config(self) -> S3Config:
        """The environment's S3 settings with this config's overrides (resolved once, on the head)."""
        over = {"endpoint_url": self.s3_endpoint_url, "region": self.s3_region, "profile": self.s3_profile,
                "checksum": self.s3_checksum}
        return dataclasses.replace(S3Config.from_env(), **{k: v for k, v in over.items() if v})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RenderConfig:
        """From JSON-like settings. A method option given at the top level (``{"strength": 0.4}``, as
        deployments and older job files write them) goes into ``options``."""
        from methods import all_options

        names = {f.name for f in dataclasses.fields(cls)}
        d = dict(d)
        method_opts = all_options()
        options = dict(d.pop("options", None) or {})
        for k in [k for k in d if k not in names and k in method_opts]:
            options[k] = d.pop(k)
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown render option(s): {', '.join(unknown)}")
        return cls(**d, options=options)
