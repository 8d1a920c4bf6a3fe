"""Gradio web app: upload a photo, get captions, an n-best list and (for attention models) where the model looked;
upload a video clip, get its caption, the frames it was made from and, for long clips, timed captions (WebVTT).

    captioner serve --checkpoint runs/demo/best.pt        # http://127.0.0.1:7860

The model is loaded once at start; requests go through Gradio's queue (`concurrency` at a time, at most
`max_queue` waiting). Uploads over MAX_VIDEO_MB are refused by Gradio's upload route, images over
MAX_UPLOAD_MB by the handler; handlers decode with the CLI's safe readers (`media.load_image`,
`media.read_video_frames`) and turn every user error into a one-line gr.Error, never a traceback. The heatmap
is Show, Attend and Tell's (Xu et al., 2015) soft attention of each word over the encoder's grid, upsampled
and blended over the crop the model saw.

Gradio is imported inside functions only, so `import captioner` never needs it.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import replace
from typing import Any, Iterator

import numpy as np
from PIL import Image

from .defaults import DEFAULT_CONCURRENCY, DEFAULT_EXAMPLES, DEFAULT_MAX_QUEUE
from .config import DECODE_METHODS, DecodeConfig
from .errors import CaptionerError, ConfigError
from .inference import Captioner
from .media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_video, load_image, read_video_frames
from .segments import format_subtitles, parse_window

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 20  # per uploaded image
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
MAX_VIDEO_MB = 200  # per uploaded video; Gradio's upload route refuses anything larger outright
MAX_VIDEO_BYTES = MAX_VIDEO_MB * 1024 * 1024
LONG_CLIP_S = 20.0  # clips longer than this get timed captions in "auto" mode
SEEN_LABEL = "What the CNN sees (its ImageNet classes as everyday nouns)"
TIMED_CHOICES = [("auto (clips over 20 s: 10 s windows)", "auto"), ("every 5 s", "5s"), ("every 10 s", "10s"),
                 ("every 30 s", "30s"), ("at shot changes", "shots"), ("off", "off")]
HEATMAP_SIZE = 384  # px, side of the attention overlay
METHOD_CHOICES = [("beam search", "beam"), ("greedy", "greedy"), ("sampling", "sample")]
CSS = """
#best-caption textarea { font-size: 1.6rem !important; font-weight: 600; line-height: 1.35; }
"""


# ---------------------------------------------------------------- pure helpers (no gradio)

def decode_settings(base: DecodeConfig, method: str, beam_size: Any, num_captions: Any, length_penalty: Any,
                    max_len: Any, temperature: Any) -> tuple[DecodeConfig, list[str]]:
    """The UI's controls -> a valid DecodeConfig, plus notes on what was adjusted (shown as warnings).

    Impossible combinations are clamped rather than refused: the user asked for captions, not a lesson in
    beam search. Out-of-range values are ConfigErrors naming the value."""
    if method not in DECODE_METHODS:
        raise ConfigError(f"unknown decoding method {method!r}; choose one of: {', '.join(DECODE_METHODS)}")
    try:
        k, n, ml = int(beam_size), int(num_captions), int(max_len)
        lp, temp = float(length_penalty), float(temperature)
    except (TypeError, ValueError):
        raise ConfigError("beam size, number of captions and max length must be whole numbers; "
                          "length penalty and temperature numbers") from None
    notes = []
    if method == "greedy" and n != 1:
        notes.append("greedy decoding gives one caption; showing 1 (use beam search or sampling for more)")
        n = 1
    if method == "beam" and n > k:
        notes.append(f"beam size {k} gives at most {k} captions; showing {k}")
        n = k
    cfg = replace(base, method=method, beam_size=k, num_captions=n, length_penalty=lp, max_len=ml,
                  temperature=temp, min_len=min(base.min_len, max(ml, 1)))
    cfg.validate()
    return cfg, notes


def model_view(image: Image.Image, transform, size: int = HEATMAP_SIZE) -> Image.Image:
    """The square the eval transform keeps (media.Preprocess.view: short side resized, then centre-cropped), at
    `size` px. Heatmaps are drawn over this crop, not the whole photo: the attention grid covers only what the
    model saw."""
    return transform.view(image).resize((size, size), Image.BICUBIC)


# Blue -> cyan -> yellow -> red, like the "jet" maps in the attention papers; no matplotlib needed.
_CMAP_X = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_CMAP_RGB = np.array([[0.0, 0.0, 0.55], [0.0, 0.45, 1.0], [0.1, 0.9, 0.7], [1.0, 0.85, 0.0], [0.9, 0.05, 0.0]])


def attention_overlay(view: Image.Image, alpha: np.ndarray, blend: float = 0.5) -> Image.Image:
    """view (S,S) RGB + one word's attention alpha (P,) over a square h x w grid -> heatmap blended over view.

    The map is scaled to [0, 1] per word (relative attention), upsampled bicubically, coloured, then blended."""
    P = int(alpha.shape[-1])
    side = math.isqrt(P)
    if side * side != P:
        raise ValueError(f"attention over {P} positions is not a square grid")
    grid = alpha.reshape(side, side).astype(np.float32)  # (h,w)
    grid = (grid - grid.min()) / max(float(grid.max() - grid.min()), 1e-8)
    heat = np.asarray(Image.fromarray(grid, mode="F").resize(view.size, Image.BICUBIC)).clip(0.0, 1.0)  # (S,S)
    color = np.stack([np.interp(heat, _CMAP_X, _CMAP_RGB[:, c]) for c in range(3)], axis=-1)  # (S,S,3)
    base = np.asarray(view.convert("RGB"), dtype=np.float32) / 255.0
    out = (1.0 - blend) * base + blend * color
    return Image.fromarray((out * 255.0).round().clip(0, 255).astype(np.uint8))


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flatten(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), value)]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_info_markdown(info: dict[str, Any], decode: DecodeConfig) -> str:
    """Captioner.info -> a Markdown table for the model panel (file name only: no server paths to the web)."""
    mc = info.get("model_config") or {}
    enc = info.get("encoder") or {}
    data = info.get("data") or {}
    layers = mc.get("num_layers", 1)
    tuned = f"fine-tuned last {mc['fine_tune_encoder']} stages" if mc.get("fine_tune_encoder") else "frozen"
    rows = [
        ("Checkpoint", f"`{os.path.basename(str(info.get('checkpoint', '?')))}`"
         + (f", epoch {info['epoch']}" if info.get("epoch") is not None else "")),
        ("Backbone", f"{mc.get('backbone', '?')} ({enc.get('weights_source', 'weights unknown')}, {tuned})"),
        ("Decoder", f"{str(mc.get('rnn', '?')).upper()}, {layers} layer{'s' if layers != 1 else ''}, "
         f"hidden {mc.get('hidden_dim', '?')}, embedding {mc.get('embed_dim', '?')}"),
        ("Attention", "yes: soft attention over the image grid (heatmaps available)" if mc.get("attention")
         else "no (global image vector; no heatmaps)"),
        ("Vocabulary", f"{info.get('vocab_size', '?'):,} words" if isinstance(info.get("vocab_size"), int)
         else "?"),
        ("Copying", f"yes: may copy any of the {mc['copy_nouns']} nouns the CNN sees most, including words no "
         f"training caption has" if mc.get("copy_nouns") else "no (words from the training captions only)"),
    ]
    if data.get("data"):
        what = f"`{os.path.basename(str(data['data']))}`"
        extra = [f"{data['format']} format" if data.get("format") else "",
                 f"split {data['split']}" if data.get("split") else "",
                 f"{data['train_images']:,} images" if isinstance(data.get("train_images"), int) else ""]
        rows.append(("Training data", what + "".join(f", {e}" for e in extra if e)))
    else:
        rows.append(("Training data", "not recorded in this checkpoint"))
    scores = [(k, v) for k, v in _flatten(info.get("scores")) if k and v is not None]
    rows.append(("Scores", ", ".join(f"{k} {_fmt(v)}" for k, v in scores[:12]) if scores
                 else "not recorded in this checkpoint"))
    rows.append(("Default decoding", f"{decode.method}" + (f", beam {decode.beam_size}, length penalty "
                 f"{decode.length_penalty:g}" if decode.method == "beam" else "") + f", max {decode.max_len} words"))
    if info.get("captioner_version"):
        rows.append(("Trained with", f"captioner {info['captioner_version']}"))
    lines = [f"| {k} | {v} |" for k, v in rows]
    return "\n".join([lines[0], "|---|---|", *lines[1:]])  # the checkpoint row doubles as the table's header


def _upload_path(payload: Any, kind: str = "image") -> tuple[str, str]:
    """A raw Gradio FileData dict (the handler runs with preprocess=False; a video comes wrapped as
    {"video": FileData}) -> (server path, name to show). Checks the per-kind size limit."""
    if isinstance(payload, dict) and isinstance(payload.get("video"), dict):
        payload = payload["video"]
    if not payload:
        raise CaptionerError("no image: upload, paste or drop a photo, or take one with the webcam" if kind == "image"
                             else "no video: upload a clip (mp4, webm, mov, avi, ...)")
    path = payload.get("path") if isinstance(payload, dict) else None
    if not path:
        raise CaptionerError("the upload did not arrive; please try again")
    name = os.path.basename(str(payload.get("orig_name") or "") or path)
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    limit = MAX_UPLOAD_MB if kind == "image" else MAX_VIDEO_MB
    if size > limit * 1024 * 1024:
        raise CaptionerError(f"{name} is {size / 2**20:.1f} MB; the limit is {limit} MB per {kind}")
    if kind == "video" and not (is_video(name) or is_video(path)):
        raise CaptionerError(f"{name} is not a video file; expected one of: {', '.join(VIDEO_EXTENSIONS)}")
    return path, name


@contextlib.contextmanager
def _user_errors(what: str, path: str, name: str) -> Iterator[None]:
    """CaptionerError -> a one-line gr.Error naming the user's file (not the server's temp path); anything else
    is a bug: traceback to the server log, one line to the UI."""
    import gradio as gr

    try:
        yield
    except CaptionerError as exc:
        raise gr.Error(str(exc).replace(path, name) if path else str(exc), title=f"Cannot caption this {what}",
                       print_exception=False) from None
    except Exception:
        log.exception("captioning %s failed", name or "an upload")
        raise gr.Error("Internal error while captioning; the server log has the details.",
                       print_exception=False) from None


class _ImageHandlers:
    """The Image tab's event handlers around one Captioner. Every user error leaves as a one-line gr.Error."""

    def __init__(self, captioner: Captioner):
        self.captioner = captioner

    def caption(self, payload, method, beam_size, num_captions, length_penalty, max_len, temperature):
        """Raw upload + controls -> best caption, n-best rows, word picker, heatmap, heatmap state."""
        import gradio as gr

        path, name = _checked_upload(payload, "image")
        with _user_errors("image", path, name):
            cfg, notes = decode_settings(self.captioner.decode_config, method, beam_size, num_captions,
                                         length_penalty, max_len, temperature)
            image = load_image(path, self.captioner.transform.short_side)  # big JPEGs decoded at reduced scale
            result = self.captioner.caption_detailed([image], decode=cfg)[0]
        for note in notes:
            gr.Warning(note)
        rows = [[i + 1, c, round(r, 3), round(s, 3), "yes" if f else "no (max length)"]
                for i, (c, r, s, f) in enumerate(zip(result.captions, result.scores, result.log_probs,
                                                     result.finished))]
        state, words_update, heat = None, gr.Radio(choices=[], value=None, visible=False), None
        att = result.attention[0] if result.attention else None  # (words,P) for the best caption
        words = result.caption.split()
        if att is not None and words and att.shape[0] == len(words):
            state = {"view": model_view(image, self.captioner.transform), "attention": att.float().numpy()}
            words_update = gr.Radio(choices=[(w, i) for i, w in enumerate(words)], value=0, visible=True)
            heat = attention_overlay(state["view"], state["attention"][0])
        return (result.caption, rows, words_update, heat, state, _seen(result),
                marked_caption(result.caption, result.candidates))

    @staticmethod
    def show_word(index, state):
        if state is None or index is None:
            return None
        return attention_overlay(state["view"], state["attention"][int(index)])

    def caption_video(self, payload, method, beam_size, num_captions, length_penalty, max_len, temperature, timed):
        """Raw upload + controls -> caption, sampled frames (gallery), timed captions (rows), WebVTT file."""
        import gradio as gr

        path, name = _checked_upload(payload, "video")
        with _user_errors("video", path, name):
            cfg, notes = decode_settings(self.captioner.decode_config, method, beam_size, num_captions,
                                         length_penalty, max_len, temperature)
            # read once: the same frames make the caption and the gallery
            clip = read_video_frames(path, self.captioner.model.cfg.num_frames,
                                     short_side=self.captioner.transform.short_side)
            result = self.captioner.caption_detailed([clip], decode=cfg)[0]
            window = parse_window("10s") if timed == "auto" else None if timed == "off" else parse_window(timed)
            segments, vtt = [], None
            if window is not None and (timed != "auto" or clip.info.duration > LONG_CLIP_S):
                segments = self.captioner.caption_segments(path, window, decode=replace(cfg, num_captions=1))
                vtt = _SUBTITLES.path(f"{os.path.splitext(name)[0] or 'captions'}.vtt")
                with open(vtt, "w", encoding="utf-8") as f:
                    f.write(format_subtitles(segments, "vtt"))
        if not self.captioner.model.cfg.is_video:
            notes.append(f"this is an image model: the caption describes the average of {len(clip.frames)} frames "
                         f"(train a video model with `captioner train --temporal ...` for motion and events)")
        for note in notes:
            gr.Warning(note)
        gallery = [(_thumbnail(f), f"{t:.1f} s") for f, t in zip(clip.frames, clip.times)]
        rows = [[_clock(s.start), _clock(s.end), s.caption] for s in segments]
        return result.caption, gallery, rows, vtt, _seen(result)


def _seen(result) -> dict[str, float] | None:
    """Candidate nouns for gr.Label: what the CNN's ImageNet classifier sees (None: no classifier)."""
    return {c.word: c.prob for c in result.candidates} or None


def marked_caption(caption: str, candidates) -> list[tuple[str, str | None]]:
    """The caption for gr.HighlightedText: words naming what the CNN sees (a candidate noun or its plural;
    in a copy model, the words it can copy) marked "seen"."""
    from .metrics import word_forms

    seen = set().union(*(word_forms(c.word) for c in candidates)) if candidates else set()
    return [(w + " ", "seen" if w in seen else None) for w in caption.split()]


def _checked_upload(payload: Any, kind: str) -> tuple[str, str]:
    with _user_errors(kind, "", ""):
        return _upload_path(payload, kind)


class _SubtitleFiles:
    """Where the Video tab writes its .vtt files before Gradio copies them into its cache: one folder for the
    app, removed at exit; a file older than `keep_s` is removed when the next one is made, so a server that
    runs for months holds only the last hour's (it used to leak a temp folder per request)."""

    def __init__(self, keep_s: float = 3600.0):
        self.keep_s = keep_s
        self.root: str | None = None

    def path(self, name: str) -> str:
        import atexit
        import shutil
        import tempfile
        import time

        if self.root is None or not os.path.isdir(self.root):
            self.root = tempfile.mkdtemp(prefix="captioner-vtt-")
            atexit.register(shutil.rmtree, self.root, True)
        now = time.time()
        for entry in os.scandir(self.root):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > self.keep_s:
                    shutil.rmtree(entry.path)
        return os.path.join(tempfile.mkdtemp(dir=self.root), name)  # a folder per request: names may repeat


_SUBTITLES = _SubtitleFiles()


def _thumbnail(frame: Image.Image, side: int = 320) -> Image.Image:
    thumb = frame.copy()
    thumb.thumbnail((side, side))
    return thumb


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:04.1f}"


# ---------------------------------------------------------------- the app

# Images and videos share one concurrency group: `concurrency` requests run at once in all, not per endpoint
# (Gradio gives each event its own group otherwise; found by scripts/load_app.py).
CAPTIONING = "captioning"


def build_app(captioner: Captioner, examples_dir: str | None, *, concurrency: int = DEFAULT_CONCURRENCY,
              max_queue: int = DEFAULT_MAX_QUEUE):
    """The Blocks app around one loaded Captioner. Call `.launch(**launch_options(...))` on it, or use `launch`."""
    import gradio as gr

    base = captioner.decode_config
    has_attention = bool(captioner.model.cfg.attention)
    handlers = _ImageHandlers(captioner)

    def toggle(method):
        return (gr.update(visible=method == "beam"), gr.update(visible=method != "greedy"),
                gr.update(visible=method == "beam"), gr.update(visible=method == "sample"))

    with gr.Blocks(title="captioner", analytics_enabled=False) as demo:
        gr.Markdown("# captioner\nUpload a photo (or drop, paste, or use the webcam) and press **Caption**.")
        with gr.Tab("Image", id="image"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    image_in = gr.Image(sources=["upload", "webcam", "clipboard"], type="filepath",
                                        label=f"Photo (jpg, png, webp, ...; at most {MAX_UPLOAD_MB} MB)",
                                        elem_id="input-image", height=360)
                    method = gr.Radio(METHOD_CHOICES, value=base.method, label="Decoding method")
                    with gr.Row():
                        beam_size = gr.Slider(1, 10, value=base.beam_size, step=1, label="Beam size",
                                              visible=base.method == "beam")
                        num_captions = gr.Slider(1, 10, value=base.num_captions, step=1, elem_id="num-captions",
                                                 label="Number of captions", visible=base.method != "greedy")
                    with gr.Row():
                        length_penalty = gr.Slider(0.0, 3.0, value=base.length_penalty, step=0.1,
                                                   label="Length penalty (0 = off)", visible=base.method == "beam")
                        max_len = gr.Slider(1, 50, value=base.max_len, step=1, label="Max length (words)")
                        temperature = gr.Slider(0.1, 2.0, value=base.temperature, step=0.05,
                                                label="Temperature", visible=base.method == "sample")
                    button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                    _examples(gr, examples_dir, image_in, IMAGE_EXTENSIONS, "Examples: click one, then Caption")
                with gr.Column(scale=1):
                    best = gr.Textbox(label="Caption", lines=2, max_lines=4, interactive=False,
                                      elem_id="best-caption", buttons=["copy"])
                    table = gr.Dataframe(headers=["rank", "caption", "score", "log-prob", "finished"],
                                         datatype=["number", "str", "number", "number", "str"],
                                         interactive=False, wrap=True, elem_id="nbest",
                                         column_widths=["9%", "49%", "14%", "14%", "14%"],
                                         label="n-best captions (score: what the search ranks by, length-normalised)")
                    gr.Markdown("### Where the model looked")
                    if has_attention:
                        gr.Markdown("Pick a word to see the attention behind it (red = most attention; scaled "
                                    "per word, over the square the model saw).")
                    else:
                        gr.Markdown("Attention heatmaps need a model trained with attention "
                                    "(`captioner train --attention`); this checkpoint has none.",
                                    elem_id="no-attention")
                    word = gr.Radio(choices=[], label="Word", visible=False, elem_id="heatmap-word")
                    heatmap = gr.Image(label="Attention heatmap", interactive=False, visible=has_attention,
                                       elem_id="heatmap", height=HEATMAP_SIZE)
                    seen = gr.Label(label=SEEN_LABEL, num_top_classes=5, elem_id="seen")
                    marked = gr.HighlightedText(label="Caption, words naming what the CNN sees marked",
                                                color_map={"seen": "green"}, show_legend=False, elem_id="marked")
            state = gr.State(None)
            button.click(handlers.caption, [image_in, method, beam_size, num_captions, length_penalty, max_len,
                                         temperature], [best, table, word, heatmap, state, seen, marked],
                         api_name="caption_image", preprocess=False, concurrency_id=CAPTIONING,
                         concurrency_limit=concurrency)
            word.input(handlers.show_word, [word, state], heatmap, api_visibility="private", show_progress="hidden")
            method.change(toggle, method, [beam_size, num_captions, length_penalty, temperature],
                          api_visibility="private", queue=False, show_progress="hidden")
        with gr.Tab("Video", id="video"):
            kind = (f"a video model ({captioner.model.cfg.temporal} over {captioner.model.cfg.num_frames} frames)"
                    if captioner.model.cfg.is_video else "an image model: a clip is captioned from the average of "
                    f"its {captioner.model.cfg.num_frames} sampled frames")
            gr.Markdown(f"Upload a clip and press **Caption video**. This checkpoint is {kind}.",
                        elem_id="video-notice")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    video_in = gr.Video(sources=["upload"], label=f"Video clip (at most {MAX_VIDEO_MB} MB)",
                                        elem_id="input-video", height=300)
                    timed = gr.Radio(TIMED_CHOICES, value="auto", label="Timed captions")
                    video_button = gr.Button("Caption video", variant="primary", elem_id="video-button")
                    _examples(gr, examples_dir, video_in, VIDEO_EXTENSIONS, "Example clips")
                with gr.Column(scale=1):
                    video_caption = gr.Textbox(label="Caption", lines=2, interactive=False, elem_id="video-caption",
                                               buttons=["copy"])
                    frames = gr.Gallery(label="Sampled frames (what the model read)", columns=4, height=260,
                                        elem_id="video-frames")
                    segments = gr.Dataframe(headers=["start", "end", "caption"], datatype=["str", "str", "str"],
                                            interactive=False, wrap=True, label="Timed captions",
                                            elem_id="video-segments", column_widths=["12%", "12%", "76%"])
                    vtt = gr.File(label="Subtitles (WebVTT)", elem_id="video-vtt")
                    video_seen = gr.Label(label=SEEN_LABEL, num_top_classes=5, elem_id="video-seen")
            video_button.click(handlers.caption_video, [video_in, method, beam_size, num_captions, length_penalty,
                                                        max_len, temperature, timed],
                               [video_caption, frames, segments, vtt, video_seen], api_name="caption_video",
                               preprocess=False, concurrency_id=CAPTIONING, concurrency_limit=concurrency)
        with gr.Accordion("Model", open=True):
            gr.Markdown(model_info_markdown(captioner.info, base), elem_id="model-info")
    return demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)


def _examples(gr, examples_dir: str | None, component, extensions: tuple[str, ...], label: str) -> None:
    """Clickable examples: the files in `examples_dir` with these extensions, if any; nothing otherwise."""
    if not examples_dir or not os.path.isdir(examples_dir):
        return
    files = sorted(os.path.join(examples_dir, f) for f in os.listdir(examples_dir)
                   if f.lower().endswith(extensions) and not f.startswith("."))
    if files:
        gr.Examples([[f] for f in files], inputs=[component], label=label, examples_per_page=12)


def launch_options(checkpoint: str | None = None) -> dict[str, Any]:
    """What `Blocks.launch` gets besides host/port: limits, and serving nothing but Gradio's own temp files.

    Gradio's /file= route serves only `allowed_paths`, its upload folder and its cache (GRADIO_TEMP_DIR);
    example images are copied into that cache. So allowed_paths stays empty, and the checkpoint is blocked too."""
    import gradio as gr

    return {"max_file_size": MAX_VIDEO_BYTES, "allowed_paths": [],
            "blocked_paths": [os.path.abspath(checkpoint)] if checkpoint else [],
            "show_error": False, "theme": gr.themes.Soft(), "css": CSS, "ssr_mode": False, "pwa": False,
            "mcp_server": False, "enable_monitoring": False, "footer_links": ["api", "gradio", "settings"]}


def launch(checkpoint: str, host: str = "127.0.0.1", port: int = 7860, share: bool = False, device: str = "auto",
           engine: str = "auto", examples_dir: str | None = DEFAULT_EXAMPLES, concurrency: int = DEFAULT_CONCURRENCY,
           max_queue: int = DEFAULT_MAX_QUEUE, prevent_thread_lock: bool = False, quiet: bool = False):
    """Load the model once, build the app and serve it. Blocks until Ctrl-C unless prevent_thread_lock;
    returns the running Blocks (call `.close()` to stop it)."""
    if concurrency < 1 or max_queue < 1:
        raise ConfigError(f"concurrency and max queue must be >= 1, got {concurrency} and {max_queue}")
    captioner = Captioner.load(checkpoint, device=device, engine=engine)
    demo = build_app(captioner, examples_dir, concurrency=concurrency, max_queue=max_queue)
    try:  # Gradio's own banner talks about launch() arguments; ours names the CLI's flags instead
        demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
                    **launch_options(checkpoint))
    except OSError as exc:
        first = str(exc).strip().split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot serve on {host}:{port} ({first}); pick another --port") from None
    if not quiet:
        print(f"captioner: serving {os.path.basename(checkpoint)} ({captioner.device}, {captioner.engine} encoder) "
              f"at {demo.local_url}"
              + (f" and {demo.share_url}" if demo.share_url else "") + "; Ctrl-C stops it", flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return demo


__all__ = ["build_app", "launch", "launch_options", "attention_overlay",
           "model_view", "model_info_markdown", "decode_settings", "MAX_UPLOAD_MB", "MAX_VIDEO_MB"]
