"""ui/: the spokenlm Gradio demo (issue 6, point 4). It imports the library; the library never imports it.

    app.py       build_app(model_dir=None, api_url=None) -> gr.Blocks, and main() for `python -m ui.app`
    backends.py  where answers come from: LocalBackend (the library in process), ApiBackend (the Serve API)
    render.py    a result -> highlighted entities, the waveform plot with token spans, the timing table
"""
