"""The page of ``silo serve``: a Gradio app, one more thin caller of the runner (see :mod:`silo.web.service`).

One sampling job runs at a time per server (one device): both the restore and the compare buttons share one
queue slot (Gradio's queue, ``concurrency_id="device"``, limit 1); a second job waits and its page shows its
place in the queue until its turn.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from silo.errors import SiloError
from silo.web.service import MODES, PageRequest, Service, metric_rows, setting_rows

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never call home, before gradio is imported

NO_EXAMPLE = "(none: use the upload)"
#: the compare tab's columns besides method and seconds (simulate mode fills the first ones, both fill the last)
COMPARE_METRICS = ("psnr", "ssim", "lpips_alex", "consistency_psnr", "consistency_psnr_vs_measurement")
ELEM = {  # element ids the browser test (and any script) finds the page's parts by
    "upload": "silo-upload",
    "example": "silo-example",
    "mode": "silo-mode",
    "task": "silo-task",
    "method": "silo-method",
    "run": "silo-run",
    "status": "silo-status",
    "result": "silo-result",
    "grid": "silo-grid",
    "metrics": "silo-metrics",
    "settings": "silo-settings",
    "downloads": "silo-downloads",
    "compare_methods": "silo-compare-methods",
    "compare_run": "silo-compare-run",
    "compare_gallery": "silo-compare-gallery",
    "compare_table": "silo-compare-table",
    "compare_status": "silo-compare-status",
}


def _number(v: Any, name: str, kind: type = float) -> Any:
    """A field left blank is not set (resolved as ``silo restore`` resolves it); else a number, or one clear line."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        value = float(v)
        if kind is int:
            if not value.is_integer():
                raise ValueError
            return int(value)
        return value
    except (TypeError, ValueError):
        raise SiloError(f"{name} must be {'a whole number' if kind is int else 'a number'}, got {v!r}") from None


def _int(v: Any, name: str = "value") -> int | None:
    return _number(v, name, int)


def _float(v: Any, name: str = "value") -> float | None:
    return _number(v, name, float)


def painted_mask(editor: Any) -> np.ndarray | None:
    """``H x W`` bool, True = known pixel, from the image editor: what the brush painted is the hole."""
    if not isinstance(editor, dict) or not editor.get("layers"):
        return None
    painted = None
    for layer in editor["layers"]:
        if layer is None:
            continue
        arr = np.asarray(layer)
        alpha = (
            arr[..., 3] > 0 if arr.ndim == 3 and arr.shape[-1] == 4 else arr.reshape(arr.shape[:2] + (-1,)).max(-1) > 0
        )
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return None
    return ~painted


def kernel_picture(kernel: np.ndarray, side: int = 160) -> np.ndarray:
    """A blur kernel as a greyscale picture (brightest = largest weight), enlarged without smoothing."""
    k = kernel / max(float(kernel.max()), 1e-12)
    img = (k * 255).round().astype(np.uint8)
    rep = max(1, side // img.shape[0])
    return np.kron(img, np.ones((rep, rep), np.uint8))


def page_request(
    upload,
    example,
    mode,
    task,
    method,
    steps,
    step_size,
    start_strength,
    seed,
    seeds,
    pad,
    convert_rgb,
    editor,
    mask_upload,
    kernel_upload,
    kernel_seed,
) -> PageRequest:
    """The page's field values as a :class:`PageRequest` (blank fields: not set, resolved as in the CLI)."""
    return PageRequest(
        upload=upload or None,
        example=None if example in (None, "", NO_EXAMPLE) else example,
        mode=mode or "measurement",
        task=task,
        method=method,
        steps=_int(steps, "steps"),
        step_size=_float(step_size, "eta / step size"),
        start_strength=_float(start_strength, "start strength"),
        seed=_int(seed, "seed"),
        seeds=int(seeds or 1),
        pad=bool(pad),
        convert_rgb=bool(convert_rgb),
        mask=painted_mask(editor),
        mask_upload=mask_upload or None,
        kernel_upload=kernel_upload or None,
        kernel_seed=_int(kernel_seed, "kernel seed"),
    )


def _one_line(err: BaseException) -> str:
    """The error as the page shows it: one line, as ``silo restore`` prints it (a traceback goes to the server log)."""
    if isinstance(err, SiloError):
        return f"error: {' '.join(str(err).split())}"
    traceback.print_exc(file=sys.stderr)
    text = " ".join(str(err).split())
    return f"error: {type(err).__name__}: {text}" if text else f"error: {type(err).__name__}"


def _metrics_markdown(log: dict[str, Any]) -> str:
    rows = metric_rows(log)
    label = log.get("method_label", log.get("method"))
    head = f"**{label}** on **{log['task']['name']}**, {log['mode']} mode, seed {log['seed']}"
    return (
        head
        + "\n\n| "
        + " | ".join(k for k, _ in rows)
        + " |\n|"
        + " --- |" * len(rows)
        + "\n| "
        + " | ".join(v for _, v in rows)
        + " |"
    )


def _gallery(items: list) -> Any:
    """Every seed's result, shown only when there are several."""
    import gradio as gr

    return gr.update(value=items, visible=len(items) > 1)


def handle_restore(service: Service, request: PageRequest, progress=None) -> tuple:
    """Restore one request; returns (status, result image, grid, every seed, metrics, downloads, settings).

    Never raises: a bad input or a failed job gives a one-line status and empty outputs.
    """

    def on_step(done: int, total: int) -> None:
        if progress is not None:
            progress((done, total), desc="sampling", unit="steps")

    try:
        res = service.restore(request, on_step)
    except Exception as err:  # noqa: BLE001 - shown on the page in one line, the traceback in the server log
        return _one_line(err), None, None, _gallery([]), "", None, []
    log = res.log
    folder = service.output_dir
    status = (
        f"done: {len(res.logs)} result(s) in {folder}"
        + (f" ({res.skipped} already there, not rerun)" if res.skipped else "")
        + f"; sampling took {log['metrics'].get('seconds', 0):.2f} s"
    )
    gallery = [(str(p), f"seed {r['seed']}") for p, r in zip(res.images, res.records)]
    downloads = [str(p) for pair in zip(res.images, res.logs) for p in pair if p.exists()]
    grid = str(res.grids[0]) if res.grids[0].exists() else None
    return (
        status,
        str(res.images[0]),
        grid,
        _gallery(gallery),
        _metrics_markdown(log),
        downloads,
        [list(r) for r in setting_rows(log)],
    )


def handle_compare(service: Service, request: PageRequest, methods: list[str], progress=None) -> tuple:
    """Two to four methods on the same input, one after the other; returns (status, gallery, table rows)."""
    methods = list(methods or [])
    if not 2 <= len(methods) <= 4:
        return f"error: choose two to four methods to compare, got {len(methods)}", [], []
    gallery, table = [], []
    for i, method in enumerate(methods):

        def on_step(done: int, total: int, i: int = i, method: str = method) -> None:
            if progress is not None:
                progress(
                    (i * total + done, len(methods) * total), desc=f"{method} ({i + 1}/{len(methods)})", unit="steps"
                )

        try:
            res = service.restore(replace(request, seeds=1), on_step, method=method)
        except Exception as err:  # noqa: BLE001 - one line on the page
            return _one_line(err).replace("error: ", f"error ({method}): ", 1), gallery, table
        log = res.log
        values = dict(metric_rows(log))
        seconds = log["metrics"].get("seconds") or 0.0
        caption = f"{log.get('method_label', method)}: {seconds:.2f} s" + (
            f", PSNR {values['psnr']}" if "psnr" in values else ""
        )
        gallery.append((str(res.images[0]), caption))
        table.append([log.get("method_label", method), f"{seconds:.2f}"] + [values.get(k, "") for k in COMPARE_METRICS])
    return f"done: {len(methods)} methods compared; results in {service.output_dir}", gallery, table


def compare_defaults(methods: list[str]) -> list[str]:
    """The compare tab's first choice: the task's first method against the measurement alone (naive)."""
    if "naive" in methods and len(methods) > 1:
        return [methods[0] if methods[0] != "naive" else methods[1], "naive"]
    return methods[:2]


def _prior_name(service: Service) -> str:
    return "silo-tiny (shipped)" if service.models.shipped_prior else str(service.models.prior_source)


def build_app(service: Service, prior_name: str = ""):
    """The Gradio Blocks of the page, with its queue set to one sampling job at a time."""
    import gradio as gr

    tasks = service.tasks()
    first_task = "sr4" if "sr4" in tasks else tasks[0]
    methods = service.methods(first_task)
    # Gradio's own copies of uploads and of shown results are removed after an hour (checked every 30 minutes)
    with gr.Blocks(title="silo: restore a photo", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "## silo: restore a photo with a latent diffusion prior (SILO)\n"
            f"Prior: `{prior_name or _prior_name(service)}` on `{service.models.device}`. "
            f"Every result is also written to `{service.output_dir}` (image, grid and JSON log), exactly as "
            "`silo restore` writes it. One job samples at a time; others wait in a queue."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Photo: a measurement to restore, or a clean photo to simulate", elem_id=ELEM["upload"]
                )
                example = gr.Dropdown(
                    [NO_EXAMPLE, *service.examples()],
                    value=NO_EXAMPLE,
                    label="or a bundled example (always simulated)",
                    elem_id=ELEM["example"],
                )
                mode = gr.Radio(
                    list(MODES),
                    value="measurement",
                    label="Mode",
                    elem_id=ELEM["mode"],
                    info="measurement: the photo IS degraded; simulate: degrade a clean photo, restore, measure",
                )
                task = gr.Dropdown(tasks, value=first_task, label="Task", elem_id=ELEM["task"])
                method = gr.Dropdown(
                    methods, value=methods[0], label="Method (those that apply to the task)", elem_id=ELEM["method"]
                )
                with gr.Accordion("Advanced", open=False):
                    gr.Markdown("A blank field is resolved as `silo restore` resolves it; its placeholder says how.")
                    hints = service.defaults(first_task, methods[0])
                    steps = gr.Textbox(label="steps", placeholder=hints["steps"], elem_id="silo-steps")
                    step_size = gr.Textbox(
                        label="eta / step size (SILO's eta, else the method's first step size)",
                        placeholder=hints["step_size"],
                        elem_id="silo-step-size",
                    )
                    start_strength = gr.Textbox(
                        label="start strength, in (0, 1]",
                        placeholder=hints["start_strength"],
                        elem_id="silo-start-strength",
                    )
                    seed = gr.Textbox(label="seed", placeholder=hints["seed"], elem_id="silo-seed")
                    seeds = gr.Slider(1, 8, value=1, step=1, label="batch of seeds (seed, seed + 1, ...)")
                    pad = gr.Checkbox(value=True, label="pad to a size the prior takes (--pad)")
                    convert_rgb = gr.Checkbox(
                        value=False, label="convert greyscale / alpha / CMYK to RGB (--convert-rgb)"
                    )
                with gr.Accordion("Mask, blur kernel", open=False):
                    editor = gr.ImageEditor(
                        label="paint the hole with the brush (painted = fill in)",
                        type="numpy",
                        image_mode="RGBA",
                        sources=["upload"],
                        layers=False,
                        elem_id="silo-mask-editor",
                    )
                    paint_on_photo = gr.Button("Paint on the uploaded photo", size="sm")
                    mask_upload = gr.File(label="or upload a mask (white = known, black = fill in)")
                    kernel_upload = gr.File(label="blur kernel (.npy)")
                    with gr.Row():
                        kernel_seed = gr.Number(label="or draw a kernel from this seed", precision=0, value=0)
                        draw = gr.Button("Draw kernel", size="sm")
                    kernel_view = gr.Image(label="drawn kernel", interactive=False, height=180)
                run_button = gr.Button("Restore", variant="primary", elem_id=ELEM["run"])
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab("Result"):
                        status = gr.Markdown(elem_id=ELEM["status"])
                        result = gr.Image(
                            label="Result", type="filepath", interactive=False, height=300, elem_id=ELEM["result"]
                        )
                        metrics = gr.Markdown(elem_id=ELEM["metrics"])
                        grid = gr.Image(
                            label="Grid, as silo restore writes it (simulate: x | A(x)+n | output | A(output))",
                            type="filepath",
                            interactive=False,
                            elem_id=ELEM["grid"],
                        )
                        every_seed = gr.Gallery(label="every seed", columns=4, height=200, visible=False)
                        downloads = gr.File(
                            label="Downloads: image and JSON log",
                            file_count="multiple",
                            interactive=False,
                            elem_id=ELEM["downloads"],
                        )
                        settings = gr.Dataframe(
                            headers=["setting", "value", "source"],
                            label="Settings as used, with their sources",
                            interactive=False,
                            wrap=True,
                            elem_id=ELEM["settings"],
                        )
                    with gr.Tab("Compare"):
                        compare_methods = gr.CheckboxGroup(
                            methods,
                            value=compare_defaults(methods),
                            label="two to four methods, same input and settings",
                            elem_id=ELEM["compare_methods"],
                        )
                        compare_button = gr.Button("Compare", variant="primary", elem_id=ELEM["compare_run"])
                        compare_status = gr.Markdown(elem_id=ELEM["compare_status"])
                        compare_gallery = gr.Gallery(label="side by side", columns=4, elem_id=ELEM["compare_gallery"])
                        compare_table = gr.Dataframe(
                            headers=["method", "seconds", *COMPARE_METRICS],
                            interactive=False,
                            elem_id=ELEM["compare_table"],
                        )

        fields = [
            upload,
            example,
            mode,
            task,
            method,
            steps,
            step_size,
            start_strength,
            seed,
            seeds,
            pad,
            convert_rgb,
            editor,
            mask_upload,
            kernel_upload,
            kernel_seed,
        ]

        def on_task(name: str):
            names = service.methods(name)
            return (
                gr.update(choices=names, value=names[0] if names else None),
                gr.update(choices=names, value=compare_defaults(names)),
            )

        def on_method(task_name: str, name: str):
            """The advanced fields' placeholders: what a blank field resolves to, and from where."""
            try:
                hints = service.defaults(task_name, name)
            except SiloError:
                return [gr.update()] * 4
            return [gr.update(placeholder=hints[k]) for k in ("steps", "step_size", "start_strength", "seed")]

        def on_example(name: str):
            return gr.update(value="simulate") if name not in (None, "", NO_EXAMPLE) else gr.update()

        def on_draw(name: str, k_seed):
            try:
                return kernel_picture(service.draw_kernel(name, _int(k_seed) or 0)), ""
            except SiloError as err:
                return None, _one_line(err)

        def on_restore(*values, progress=gr.Progress()):
            try:
                request = page_request(*values)
            except SiloError as err:
                return _one_line(err), None, None, _gallery([]), "", None, []
            return handle_restore(service, request, progress)

        def on_compare(*values, progress=gr.Progress()):
            *fields_values, chosen = values
            try:
                request = page_request(*fields_values)
            except SiloError as err:
                return _one_line(err), [], []
            return handle_compare(service, request, chosen, progress)

        task.change(on_task, task, [method, compare_methods], queue=False)
        method.change(on_method, [task, method], [steps, step_size, start_strength, seed], queue=False)
        example.change(on_example, example, mode, queue=False)
        paint_on_photo.click(lambda f: f, upload, editor, queue=False)
        draw.click(on_draw, [task, kernel_seed], [kernel_view, status], queue=False)
        run_button.click(
            on_restore,
            fields,
            [status, result, grid, every_seed, metrics, downloads, settings],
            concurrency_limit=1,
            concurrency_id="device",
        )
        compare_button.click(
            on_compare,
            [*fields, compare_methods],
            [compare_status, compare_gallery, compare_table],
            concurrency_limit=1,
            concurrency_id="device",
        )
    demo.queue(default_concurrency_limit=1)
    return demo


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, a port this machine cannot listen on (taken, or not allowed)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, port))
    except OSError as err:
        raise SiloError(f"cannot listen on {host}:{port} ({err.strerror or err}); pass another --port") from None


def launch(
    service: Service, host: str = "127.0.0.1", port: int = 7860, share: bool = False, prior_name: str = ""
) -> None:
    """Serve the page until interrupted; binds to ``host`` only, and shares publicly only with ``share``."""
    import gradio as gr

    demo = build_app(service, prior_name)
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: works offline
        font_mono=["ui-monospace", "monospace"],
    )
    out = Path(service.output_dir).resolve()
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            share=share,
            ssr_mode=False,
            allowed_paths=[str(out)],
            theme=theme,
            show_error=False,
            quiet=True,
            footer_links=[],
            max_file_size="200mb",  # beyond any photo --max-pixels lets through; refused by Gradio before a job starts
        )
    except OSError as err:  # the port taken between the check and the launch
        raise SiloError(f"cannot serve on {host}:{port}: {' '.join(str(err).split('.')[0].split())}") from None
