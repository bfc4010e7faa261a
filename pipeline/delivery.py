"""What a render delivers: the codec, its bit depth and the colour it is tagged (and converted) to.

``Delivery`` is a small value type the CLI, a job file and a deployment all give the same way
(``--codec``, ``--bit-depth``, ``--color``). It answers every format question the rest of the
pipeline asks: the pixel format and encoder options of a segment, the segment's container, whether
the output is a file or a folder of numbered images, the filter that takes the render's RGB frames
to the output's colour, and the tags written.

Colour. Decoding gives full-range RGB in the *source's* primaries and transfer (the YCbCr matrix
and range are undone there, ``ffmpeg_tools._rgb_scale``). ``--color source`` (the default) writes
that RGB back with the source's own primaries, transfer and matrix tags, so nothing is converted
and a player shows the film's colours as the source had them; an untagged source gets what players
assume for it (BT.709 from 720 lines up, SMPTE 170M below). ``--color bt709`` or ``bt2020`` converts
the primaries (zimg, through linear light; colours outside BT.709 clip) and tags the result so.
HDR transfers (PQ, HLG) are passed through untouched with ``source`` and refused for a conversion:
that needs tone mapping, which filmstyle does not do.

Masters. ``prores`` is ProRes 422 HQ (10-bit 4:2:2, .mov); ``ffv1`` lossless FFV1 level 3 in 4:4:4
(.mkv). ``png``, ``tiff`` and ``exr`` are image sequences: each chunk is encoded as a lossless RGB
FFV1 segment (so chunks commit and resume like any other) and the assembly writes the numbered
images, the audio beside them as WAV, and a manifest. EXR holds scene-linear half (or float)
values, as compositing software expects: the transfer is undone at assembly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InputError
from .hw_encode import NVENC, NVENC_PIX_FMT, nvenc_fits, nvenc_options

SEQUENCE_MANIFEST = "filmstyle-sequence.json"  # in an image-sequence folder; marks it as filmstyle's
CODEC_NAMES = ("h264", "h265", "prores", "ffv1", "png", "tiff", "exr")
COLOR_NAMES = ("source", "bt709", "bt2020")
HDR_TRANSFERS = ("smpte2084", "arib-std-b67")


@dataclass(frozen=True)
class Codec:
    name: str
    encoder: str
    pix_fmts: dict  # bit depth -> the output's pixel format
    default_depth: int
    suffixes: tuple[str, ...]  # output file suffixes it goes in (the first is the default); () = folder
    rgb: bool = False  # stored as RGB (no YCbCr matrix, full range)
    options: dict = field(default_factory=dict)

    @property
    def sequence(self) -> bool:
        return not self.suffixes


CODECS = {c.name: c for c in (
    Codec("h264", "libx264", {8: "yuv420p", 10: "yuv420p10le"}, 8, (".mp4", ".mkv", ".mov", ".m4v")),
    Codec("h265", "libx265", {8: "yuv420p", 10: "yuv420p10le"}, 8, (".mp4", ".mkv", ".mov", ".m4v"),
          # hvc1: the sample entry Apple's players and NLEs accept (ffmpeg's default hev1 they refuse)
          options={"tag:v": "hvc1", "x265-params": "log-level=error"}),
    Codec("prores", "prores_ks", {10: "yuv422p10le"}, 10, (".mov", ".mkv"),
          options={"profile:v": 3, "vendor": "apl0"}),  # 3 = 422 HQ; apl0 as Apple's own encoder tags it
    Codec("ffv1", "ffv1", {8: "yuv444p", 10: "yuv444p10le", 16: "yuv444p16le"}, 10, (".mkv",),
          options={"level": 3, "slicecrc": 1, "g": 1}),  # v3 with per-slice CRCs: an archive format
    Codec("png", "png", {8: "rgb24", 16: "rgb48be"}, 16, (), rgb=True),
    Codec("tiff", "tiff", {8: "rgb24", 16: "rgb48le"}, 16, (), rgb=True, options={"compression_algo": "deflate"}),
    Codec("exr", "exr", {16: "gbrpf32le", 32: "gbrpf32le"}, 16, (), rgb=True, options={"compression": "zip16"}),
)}

# Lossless RGB segments of an image-sequence render, by the sequence's bit depth.
SEQUENCE_SEGMENT = {8: "gbrp", 16: "gbrp16le", 32: "gbrp16le"}


@dataclass(frozen=True)
class ColorTags:
    """ffmpeg's names for the colour of a stream."""
    primaries: str
    transfer: str
    matrix: str


COLOR_PRESETS = {"bt709": ColorTags("bt709", "bt709", "bt709"),
                 # the 10-bit BT.2020 transfer is the BT.709 curve
                 "bt2020": ColorTags("bt2020", "bt2020-10", "bt2020nc")}
SD_TAGS = ColorTags("smpte170m", "smpte170m", "smpte170m")
# ffmpeg primaries / transfer name -> zimg's (the zscale filter's)
_Z_PRIMARIES = {"bt709": "709", "bt2020": "2020", "smpte170m": "170m", "bt470bg": "470bg", "smpte240m": "240m"}
_Z_TRANSFER = {"bt709": "709", "bt2020-10": "2020_10", "bt2020-12": "2020_12", "smpte170m": "601",
               "bt470bg": "601", "iec61966-2-1": "iec61966-2-1", "linear": "linear", "smpte2084": "smpte2084",
               "arib-std-b67": "arib-std-b67"}
# ffmpeg matrix tag -> the scale filter's out_color_matrix
_SCALE_MATRIX = {"bt709": "bt709", "smpte170m": "bt601", "bt470bg": "bt601", "bt2020nc": "bt2020",
                 "bt2020c": "bt2020", "smpte240m": "smpte240m", "fcc": "fcc"}


def source_tags(info) -> ColorTags:
    """The source's colour, each untagged part filled in as players assume it."""
    hd = info.width >= 1280 or info.height >= 720
    guess = COLOR_PRESETS["bt709"] if hd else SD_TAGS
    matrix = info.color_space if info.color_space in _SCALE_MATRIX else guess.matrix
    return ColorTags(info.color_primaries if info.color_primaries in _Z_PRIMARIES else guess.primaries,
                     info.color_trc if info.color_trc in _Z_TRANSFER else guess.transfer, matrix)


@dataclass(frozen=True)
class Delivery:
    codec: str = "h264"
    bit_depth: int | None = None  # None: the codec's default
    color: str = "source"
    crf: int = 18  # h264/h265 quality
    preset: str = "medium"  # h264/h265 speed
    encoder: str = "software"  # software (x264/x265) or nvenc: resolved by pipeline.hw_encode

    def __post_init__(self):
        if self.codec not in CODECS:
            raise InputError(f"unknown codec {self.codec!r}; choose from {', '.join(CODEC_NAMES)}")
        if self.color not in COLOR_NAMES:
            raise InputError(f"unknown colour {self.color!r}; choose from {', '.join(COLOR_NAMES)}")
        if self.bit_depth is not None and self.bit_depth not in self.spec.pix_fmts:
            raise InputError(f"--codec {self.codec} takes --bit-depth "
                             f"{' or '.join(str(d) for d in self.spec.pix_fmts)}, not {self.bit_depth}")
        if self.encoder not in ("software", "nvenc"):
            raise InputError(f"unknown segment encoder {self.encoder!r} (software or nvenc)")
        if self.encoder == "nvenc" and not nvenc_fits(self.codec, self.depth):
            raise InputError(f"NVENC encodes h264 (8-bit) and h265 (8- or 10-bit), not {self.codec} at {self.depth} bits")

    @property
    def spec(self) -> Codec:
        return CODECS[self.codec]

    @property
    def depth(self) -> int:
        return self.bit_depth or self.spec.default_depth

    @property
    def sequence(self) -> bool:
        return self.spec.sequence

    @property
    def pix_fmt(self) -> str:
        return self.spec.pix_fmts[self.depth]

    def check_output(self, output: str) -> None:
        """One clear error when the output path does not fit the codec."""
        import os

        suffix = os.path.splitext(output.rstrip("/"))[1].lower()
        if self.sequence:
            if suffix:
                raise InputError(f"{output}: --codec {self.codec} writes a folder of numbered images; "
                                 f"give a folder name without a suffix")
        elif suffix not in self.spec.suffixes:
            raise InputError(f"{output}: unsupported output type {suffix or '(none)'}: --codec {self.codec} goes in "
                             f"{', '.join(self.spec.suffixes)}"
                             + ("; png, tiff and exr write a folder" if not suffix else ""))

    # ------------------------------------------------------------- segments

    @property
    def segment_suffix(self) -> str:
        return ".mkv" if self.sequence or self.spec.suffixes[0] == ".mkv" else self.spec.suffixes[0]

    @property
    def segment_pix_fmt(self) -> str:
        if self.encoder == "nvenc":
            return NVENC_PIX_FMT[self.depth]
        return SEQUENCE_SEGMENT[self.depth] if self.sequence else self.pix_fmt

    def segment_encoder(self) -> tuple[str, dict]:
        """The segment encoder and its options (segments concatenate by stream copy)."""
        if self.sequence:
            return "ffv1", {"level": 3, "g": 1}
        if self.encoder == "nvenc":
            tag = {"tag:v": self.spec.options["tag:v"]} if "tag:v" in self.spec.options else {}
            return NVENC[self.codec][0], {**tag, **nvenc_options(self.crf)}
        opts = dict(self.spec.options)
        if self.codec in ("h264", "h265"):
            opts.update(crf=self.crf, preset=self.preset)
        return self.spec.encoder, opts

    # ------------------------------------------------------------- colour

    def tags(self, info) -> ColorTags:
        """The output's colour tags: the source's, or the preset asked for (``info`` None: no source,
        BT.709 unless asked otherwise)."""
        if info is None:
            return COLOR_PRESETS["bt709" if self.color == "source" else self.color]
        src = source_tags(info)
        if self.color == "source":
            return src
        if src.transfer in HDR_TRANSFERS:
            raise InputError(f"{info.path}: the source is HDR ({src.transfer}); --color {self.color} would need "
                             f"tone mapping, which filmstyle does not do: keep --color source")
        return COLOR_PRESETS[self.color]

    def convert_filter(self, info) -> str:
        """The filter taking the render's RGB (source primaries and transfer) to the output's, or ''."""
        if info is None:
            return ""
        src, out = source_tags(info), self.tags(info)
        if (src.primaries, _Z_TRANSFER[src.transfer]) == (out.primaries, _Z_TRANSFER[out.transfer]):
            return ""
        # float in, so a 10- or 16-bit output keeps the precision the conversion computes
        return (f"format=gbrpf32le,zscale=primariesin={_Z_PRIMARIES[src.primaries]}:transferin={_Z_TRANSFER[src.transfer]}"
                f":primaries={_Z_PRIMARIES[out.primaries]}:transfer={_Z_TRANSFER[out.transfer]}"
                f":rangein=full:range=full")

    def linear_filter(self, info) -> str:
        """The filter undoing the output's transfer (display-linear float RGB, as EXR holds it)."""
        tags = self.tags(info)
        p = _Z_PRIMARIES[tags.primaries]
        return (f"format=gbrpf32le,zscale=primariesin={p}:primaries={p}"
                f":transferin={_Z_TRANSFER[tags.transfer]}:transfer=linear:rangein=full:range=full")

    def out_matrix(self, info) -> str:
        """The scale filter's name for the output's YCbCr matrix."""
        return _SCALE_MATRIX[self.tags(info).matrix]

    def to_dict(self) -> dict:
        d = {"codec": self.codec, "bit_depth": self.depth, "color": self.color}
        if self.encoder != "software":  # software is left out, so older work keys stay valid
            d["encoder"] = self.encoder
        return d
