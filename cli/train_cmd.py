"""``filmstyle train``: the image phase (a per-frame net) or, with --video, a temporal phase (flow-recurrent or
ReCoNet); ``filmstyle distill``: a flow-free student from a style's two nets."""
from __future__ import annotations

import sys

from pipeline.errors import FilmstyleError

from .args import EPILOG, add_device_option, positive_int


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a style model", epilog=EPILOG,
                       description="Train a feed-forward style model on a folder of content photos (image phase), "
                                   "or with --video fine-tune it into a flow-recurrent model on frame pairs "
                                   "(synthetic camera motion over the photos + real clips with DIS flow). "
                                   "Resumes automatically from OUT.state.safetensors if present.")
    p.add_argument("--style", metavar="IMAGE", help="style image (required for the image phase)")
    p.add_argument("--data", action="append", metavar="DIR",
                   help="folder of content images, repeat for several (required for the image phase)")
    p.add_argument("--out", required=True, metavar="CKPT", help="output checkpoint (.safetensors)")
    p.add_argument("--init", metavar="CKPT",
                   help="per-frame checkpoint to start from: a warm start from a trained net of the same size and "
                        "norm (e.g. models/weights/mosaic.safetensors); required with --video")
    v = p.add_argument_group("video phase (flow-recurrent)")
    v.add_argument("--video", action="store_true", help="train the flow-recurrent (7-channel) model")
    v.add_argument("--videos", action="append", metavar="DIR",
                   help="folder of clips for real frame pairs (default: ../shared/data/videos when present)")
    v.add_argument("--temporal", choices=["recurrent", "reconet"], default="recurrent",
                   help="recurrent: a flow-recurrent net (method flow-recurrent, flow at render time); reconet: "
                        "ReCoNet two-frame training of a one-frame net (method stable, no flow at render time)")
    v.add_argument("--temporal-weight", type=float, default=None,
                   help="output-level temporal loss weight (default: 20)")
    v.add_argument("--temporal-feature-weight", type=float, default=None,
                   help="feature-level temporal loss weight (default: off for recurrent, the output weight for "
                        "reconet)")
    v.add_argument("--dark-fraction", type=float, default=None, metavar="P",
                   help="share of the training pairs darkened to a night shot or a fade from black (default: 0.2 "
                        "recurrent, 0 reconet)")
    v.add_argument("--feedback-jitter", type=float, default=None, metavar="J",
                   help="recurrent: jitter the fed-back output's contrast by 1+-J and its level by +-J/2 "
                        "(the temporal loss still asks for the true one; default: 0.3)")
    p.add_argument("--size", default="full", help="network size: full or student")
    p.add_argument("--norm", default=None, choices=["instance", "instance-inner", "frn", "none"],
                   help="normalization layers of the net (default: instance)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: 1600, video phase 500)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: 8, video phase 4")
    p.add_argument("--image-size", type=positive_int, default=None, help="training crop size (default: 256, video phase 192)")
    p.add_argument("--style-size", type=positive_int, default=None,
                   help="long side of the style image: strokes come out at its pixel scale (default: 512)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 1e-3, video phase 2e-4)")
    p.add_argument("--lr-warmup", type=int, default=None, metavar="STEPS",
                   help="ramp the learning rate up over the first STEPS steps (image phase; default 200)")
    p.add_argument("--lr-decay", default=None, choices=["constant", "cosine"],
                   help="constant, or cosine: the rate falls to 0 over the steps after warm-up (image phase; "
                        "default constant)")
    p.add_argument("--grad-clip", type=float, default=None, metavar="NORM",
                   help="clip the global gradient norm; 0: off (default: 100 image phase, off video phase)")
    p.add_argument("--content-weight", type=float, default=None)
    p.add_argument("--style-weight", type=float, default=None)
    p.add_argument("--tv-weight", type=float, default=None)
    p.add_argument("--tone-weight", type=float, default=None,
                   help="keep the photo's light and dark (1 - correlation of blurred luminance; default 1)")
    add_device_option(p, "training")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=float, default=120.0, metavar="SECONDS")
    p.add_argument("--checkpoint-every-steps", type=int, default=0, metavar="N")
    p.add_argument("--vgg", default=None, metavar="PATH", help="torchvision VGG16/19 state dict to use as loss network")
    p.add_argument("--restart", action="store_true", help="ignore an existing training state")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="distil a small flow-free student from a style's nets", epilog=EPILOG,
                       description="Chen et al. 2020: a one-frame student that follows a flow-guided render "
                                   "(teacher A), weighted where it differs from the per-frame net (teacher B), with a "
                                   "low-rank loss over K flow-aligned frames. Render it with --method distilled. "
                                   "Resumes from OUT.state.safetensors.")
    p.add_argument("style", nargs="?", metavar="STYLE",
                   help="a shipped style: its per-frame net is teacher B (and A's net with flow-blend)")
    p.add_argument("--teacher-flow", metavar="CKPT|recurrent|flow-blend", default="flow-blend",
                   help="teacher A: flow-blend (the flow-blend render of teacher B's net; default: it keeps B's "
                        "light and dark), recurrent (STYLE's shipped flow-recurrent net) or a flow-recurrent checkpoint")
    p.add_argument("--teacher-frame", metavar="CKPT", help="teacher B: a per-frame checkpoint (default: STYLE's)")
    p.add_argument("--out", required=True, metavar="CKPT")
    p.add_argument("--data", action="append", metavar="DIR", help="content photos (default: teacher B's)")
    p.add_argument("--size", default=None, help="student size (default: student)")
    p.add_argument("--norm", default=None, choices=["instance", "instance-inner", "frn", "none"],
                   help="normalization layers of the student (default: the size's, none for student)")
    p.add_argument("--init", metavar="CKPT", help="start from this net of the student's size (a warm start: another "
                                                   "style's student, or an earlier run's)")
    for flag, kind, what in (("--steps", positive_int, "training steps (default: 2000)"),
                             ("--frames", positive_int, "K consecutive frames per sample (default: 4)"),
                             ("--image-size", positive_int, "crop size (default: 192)"),
                             ("--batch-size", positive_int, "sequences per step (default: 2)"),
                             ("--alpha", float, "difference weighting; 0 for none (default: 10)"),
                             ("--low-rank-weight", float, "low-rank loss weight; 0 for none (default: 1)"),
                             ("--distill-weight", float, "weight of following teacher A (default: 10)"),
                             ("--perceptual-scale", float,
                              "times teacher B's perceptual loss weights (content, style, tv, tone; default: 1)")):
        p.add_argument(flag, type=kind, default=None, help=what)
    p.add_argument("--lr-decay", default=None, choices=["constant", "cosine"],
                   help="cosine: the rate falls to 0 over the steps after warm-up (default: cosine)")
    add_device_option(p, "training")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=float, default=120.0, metavar="SECONDS")
    p.add_argument("--restart", action="store_true", help="ignore an existing training state")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_distill)


def cmd_distill(args) -> int:
    from methods import resolve_style
    from models.distill import DistillConfig, distill
    from pipeline.device import resolve_device

    flow, frame = args.teacher_flow, args.teacher_frame
    if flow == "recurrent":
        if not args.style:
            raise FilmstyleError("--teacher-flow recurrent takes STYLE's shipped flow-recurrent net: name a STYLE")
        flow = str(resolve_style(args.style, "flow-recurrent"))
    if args.style:
        frame = frame or str(resolve_style(args.style, "per-frame"))
    if not frame:
        raise FilmstyleError("distill needs a STYLE, or --teacher-frame")
    cfg = DistillConfig(teacher_flow=flow, teacher_frame=frame, out=args.out, data=args.data,
                        bf16={"auto": None, "on": True, "off": False}[args.bf16], seed=args.seed,
                        checkpoint_every_s=args.checkpoint_every, device=resolve_device(args.device))
    for name in ("size", "norm", "init", "steps", "frames", "image_size", "batch_size", "alpha", "low_rank_weight",
                 "distill_weight", "perceptual_scale", "lr_decay"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    from methods.flow_blend import BlendTeacher

    path = distill(cfg, restart=args.restart, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr),
                   blend_teacher=BlendTeacher)
    print(f"wrote {path}")
    return 0


def cmd_train(args) -> int:
    from models.train import TrainConfig, train
    from pipeline.device import resolve_device

    if args.video:
        return _train_video(args)
    if not args.style or not args.data:
        raise FilmstyleError("train needs --style IMAGE and --data DIR (or --video --init CKPT)")
    cfg = TrainConfig(style=args.style, data=args.data, out=args.out, size=args.size,
                      bf16={"auto": None, "on": True, "off": False}[args.bf16], seed=args.seed,
                      checkpoint_every_s=args.checkpoint_every, checkpoint_every_steps=args.checkpoint_every_steps,
                      vgg=args.vgg, device=resolve_device(args.device), init=args.init)
    for name in ("norm", "steps", "batch_size", "image_size", "style_size", "lr", "content_weight", "style_weight",
                 "tv_weight", "tone_weight", "grad_clip", "lr_warmup", "lr_decay"):
        if getattr(args, name) is not None:  # else the recipe's default (models/train.py)
            setattr(cfg, name, getattr(args, name))
    path = train(cfg, restart=args.restart, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {path}")
    return 0


def _train_video(args) -> int:
    from models.train_video import VideoTrainConfig, train_video
    from pipeline.device import resolve_device

    if not args.init:
        raise FilmstyleError("train --video needs --init CKPT (an image-phase checkpoint)")
    cfg = VideoTrainConfig(init=args.init, out=args.out, data=args.data, videos=args.videos, style=args.style,
                           bf16={"auto": None, "on": True, "off": False}[args.bf16], seed=args.seed,
                           checkpoint_every_s=args.checkpoint_every,
                           checkpoint_every_steps=args.checkpoint_every_steps, vgg=args.vgg,
                           device=resolve_device(args.device), temporal=args.temporal)
    for name in ("steps", "batch_size", "image_size", "style_size", "lr", "content_weight", "style_weight",
                 "tv_weight", "tone_weight", "temporal_weight", "temporal_feature_weight", "grad_clip",
                 "dark_fraction", "feedback_jitter"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    path = train_video(cfg, restart=args.restart, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {path}")
    return 0
