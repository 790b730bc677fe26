"""ui/render.py: entity highlighting, timing rows and the waveform plot, from plain values."""

import numpy as np

from ui.render import MAX_PLOT_POINTS, highlighted_entities, timing_rows, waveform_figure


def test_highlighted_entities_keep_char_spans_and_drop_spans_outside_the_text():
    record = {
        "text": "i met john smith in paris",
        "entities": [
            {"tag": "PERSON", "start_char": 6, "end_char": 16},
            {"tag": "GPE", "start_char": 20, "end_char": 25},
            {"tag": "ORG", "start_char": 20, "end_char": 99},  # a model's bad span: not drawn
            {"tag": "ORG", "start_char": "x"},  # a malformed API entity: skipped
        ],
    }
    value = highlighted_entities(record)
    assert value["text"] == record["text"]
    spans = [(record["text"][e["start"] : e["end"]], e["entity"]) for e in value["entities"]]
    assert spans == [("john smith", "PERSON"), ("paris", "GPE")]


def test_no_entities_for_tasks_other_than_ner():
    assert highlighted_entities({"text": "hello", "entities": None}) is None


def test_timing_rows_end_with_the_total():
    rows = timing_rows({"compress": 10.04, "llm": 20.0})
    assert rows == [["compress", 10.0], ["llm", 20.0], ["total", 30.0]]
    rows = timing_rows({"load_audio": 1.0, "server/llm": 20.0, "round_trip": 25.0})
    assert rows[-1] == ["total", 26.0]  # the server's stages are inside the round trip


def test_waveform_figure_shades_one_band_per_token_and_marks_located_entities():
    wave = np.sin(np.linspace(0, 400, 16_000 * 3)).astype(np.float32)  # 3 s
    spans = [(i * 0.25, (i + 1) * 0.25) for i in range(12)]
    entities = [{"tag": "PERSON", "start_s": 1.0, "end_s": 1.5}, {"tag": "GPE", "start_s": None, "end_s": None}]
    fig = waveform_figure(wave, spans, entities)
    ax = fig.axes[0]
    assert "12 compressed speech tokens (4.0 per second)" == ax.get_title()
    bands = [p for p in ax.patches]  # axvspan draws one Rectangle per token span
    assert len(bands) == 12
    assert [t.get_text() for t in ax.texts] == ["PERSON"]  # only the entity with audio times
    envelope = ax.collections[0].get_paths()[0].vertices
    assert len(envelope) <= 2 * MAX_PLOT_POINTS + 8  # long audio is drawn as a bounded envelope


def test_waveform_figure_without_spans_says_so():
    fig = waveform_figure(np.zeros(1600, dtype=np.float32), None)
    assert "no token spans" in fig.axes[0].get_title()
