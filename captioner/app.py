"""Gradio web app: upload a photo, get captions, an n-best list and (for attention models) where the model looked;
upload a video clip, get its caption, the frames it was made from and, for long clips, timed captions (WebVTT).

    captioner serve --checkpoint runs/demo/best.pt        # http://127.0.0.1:7860

The model is loaded once at start; requests go through Gradio's queue (`concurrency` at a time, at most
`max_queue` waiting). Uploads over MAX_VIDEO_MB are refused by Gradio's upload route, images over
MAX_UPLOAD_MB by the handler; handlers decode with the CLI's safe readers (`media.load_image`,
`media.read_video_frames`) and turn every user error into a one-line gr.Error, never a traceback. The heatmap
is Show, Attend and Tell's (Xu et al., 2015) soft attention of each word over the encoder's grid, upsampled
and blended over the crop the model saw.

Gradio is imported inside functions only, so `import captioner` never needs it. What the page shows, apart
from Gradio (decoding controls, the heatmap, the model card, marked captions), is in app_views.py.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import replace
from typing import Any, Iterator


from .defaults import DEFAULT_CONCURRENCY, DEFAULT_EXAMPLES, DEFAULT_MAX_QUEUE
from .errors import CaptionerError, ConfigError
from .inference import Captioner
from .media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_video, load_image, read_video_frames
from .segments import format_subtitles, parse_window
from .app_views import (HEATMAP_SIZE, _clock, _seen, _SubtitleFiles, _thumbnail, attention_overlay,  # noqa: F401
                        decode_settings, marked_caption, model_info_markdown, model_view)

_SUBTITLES = _SubtitleFiles()

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 20  # per uploaded image
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
MAX_VIDEO_MB = 200  # per uploaded video; Gradio's upload route refuses anything larger outright
MAX_VIDEO_BYTES = MAX_VIDEO_MB * 1024 * 1024
LONG_CLIP_S = 20.0  # clips longer than this get timed captions in "auto" mode
SEEN_LABEL = "What the CNN sees (its ImageNet classes as everyday nouns)"
TIMED_CHOICES = [("auto (clips over 20 s: 10 s windows)", "auto"), ("every 5 s", "5s"), ("every 10 s", "10s"),
                 ("every 30 s", "30s"), ("at shot changes", "shots"), ("off", "off")]
METHOD_CHOICES = [("beam search", "beam"), ("greedy", "greedy"), ("sampling", "sample")]
CSS = """
#best-caption textarea { font-size: 1.6rem !important; font-weight: 600; line-height: 1.35; }
"""


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


def _checked_upload(payload: Any, kind: str) -> tuple[str, str]:
    with _user_errors(kind, "", ""):
        return _upload_path(payload, kind)




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
