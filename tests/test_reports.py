"""Report callbacks against hand-computed expectations."""

import torch

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.codec import to_builtin

LOGITS = torch.tensor(
    [
        [5.0, 1.0, 0.0],  # pred 0, true 0: right and sure
        [0.0, 3.0, 2.9],  # pred 1, true 2: wrong, top-2 right
        [1.0, 1.0, 1.1],  # pred 2, true 1: wrong, hesitant
        [0.0, 0.1, 4.0],  # pred 2, true 2: right
    ]
)
LABELS = torch.tensor([0, 2, 1, 2])


def _run(callbacks, batches=1):
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).view(4, 3, 2, 2) / 48
    recipe = Recipe(lambda b: {"pred": LOGITS.clone()}, [(images, LABELS)] * batches)
    recipe.callbacks.add_callbacks([ecb.Counter(), *callbacks])
    return recipe.run(1)


def test_accuracy_and_topk():
    state = _run(
        [ecb.AccAvg(), ecb.TopkAccAvg(k=2), ecb.TopkAccAvg(k=3, avg_type="running")], batches=3
    )
    assert float(state["metrics"]["acc"]) == 0.5
    # top-2: sample 0 yes, 1 yes (2.9 is second), 2: true 1 ties with 0 at 1.0 → topk picks
    # one of them; sample 3 yes
    assert float(state["metrics"]["top2_acc"]) in (0.75, 1.0)
    assert float(state["metrics"]["top3_acc"]) == 1.0


def test_binary_logits_are_two_columns():
    from evloop.callbacks.accuracy import as_multiclass_shape

    assert as_multiclass_shape(torch.tensor([2.0, -1.0])).argmax(1).tolist() == [1, 0]


def test_confusion_matrix_counts_f1_and_escaped_labels():
    labels = ["<cat>", "dog", "bird"]
    state = _run([ecb.ConfusionMatrix(labels)], batches=2)
    # cm[pred][true], two identical batches
    expected = torch.tensor([[2, 0, 0], [0, 0, 2], [0, 2, 2]])
    assert torch.equal(state["cm"], expected)
    html = str(state["metrics"]["cm"])
    assert "&lt;cat&gt;" in html and "<cat>" not in html
    assert html.count("<tr>") == 4

    binary = Recipe(
        lambda b: {"pred": torch.tensor([2.0, 2.0, -2.0, -2.0, 2.0])},
        [(torch.zeros(5, 1), torch.tensor([1, 0, 1, 0, 1]))],
    )
    binary.callbacks.add_callback(ecb.ConfusionMatrix(["no", "yes"]))
    state = binary.run(1)
    # tp = 2, fp = 1, fn = 1 → f1 = 4 / 6
    assert abs(float(state["metrics"]["f1"]) - 4 / 6) < 1e-6


def test_inspector_picks_best_worst_and_most_confused():
    inspector = ecb.ClassificationInspector(1, ["a", "b", "c"], post_each_batch=False)
    state = _run([inspector])
    probs = LOGITS.softmax(1).gather(1, LABELS[:, None])[:, 0]
    assert inspector.best.fields["label"].tolist() == [0]  # sample 0
    assert inspector.worst.fields["prob"].tolist() == [probs.min().item()]
    closest = (probs - 1 / 3).abs().argmin()
    assert inspector.confused.fields["prob"].tolist() == [probs[closest].item()]
    html = to_builtin(state["metrics"]["report"])  # rendered on the consumer side
    assert html.count("<img") == 3 and "data:image/png;base64," in html
    assert "true: a" in html and "✓" in html and "✗" in html


def test_metrics_table_and_reports_stay_out_of_checkpoints():
    recipe = Recipe(
        lambda b: {"pred": LOGITS, "loss": torch.tensor(0.25)}, [(torch.zeros(4, 3, 2, 2), LABELS)]
    )
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Log("loss", "loss"),
            ecb.ConfusionMatrix(["a", "b", "c"]),
            ecb.MetricsTable(),
        ]
    )
    state = recipe.run(1)
    html = str(state["metrics"]["table"])
    assert "<td>loss</td><td>0.25</td>" in html
    saved_metrics = recipe.state_dict()["callbacks"]["state"]["metrics"]
    assert set(saved_metrics) == {"loss"}  # the HTML reports are display-only


def test_image_gradient_vis_only_on_logged_steps():
    weights = torch.tensor([1.0, 0.0, 0.0, 0.0])

    def forward(batch):
        x, y = batch
        (x.flatten(1)[:, :4] * weights).sum().backward()
        return {}

    recipe = Recipe(forward, [(torch.rand(2, 1, 2, 2), torch.zeros(2))] * 6)
    seen = []

    class Spy:
        def on_batch_end(self, state):
            seen.append("feature_vis" in state["metrics"])
            state["metrics"].pop("feature_vis", None)

    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.ImageGradientVis(), Spy()])
    recipe.bus.subscribe(lambda e: None, types=[__import__("evloop").events.BatchEnded], every=3)
    recipe.run(1)
    assert seen == [True, False, False, True, False, False]


def test_confusion_matrix_equals_a_reference_on_random_data():
    from sklearn.metrics import confusion_matrix

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(37, 7, generator=g), torch.randint(0, 7, (37,), generator=g))]
    batches += [(torch.randn(64, 7, generator=g), torch.randint(0, 7, (64,), generator=g))]
    batches += [(torch.randn(5, 7, generator=g), torch.randint(0, 7, (5,), generator=g))]
    recipe = Recipe(lambda b: {"pred": b[0]}, batches)
    recipe.callbacks.add_callback(ecb.ConfusionMatrix([str(i) for i in range(7)]))
    state = recipe.run(1)
    pred = torch.cat([x.argmax(1) for x, _ in batches])
    true = torch.cat([y for _, y in batches])
    reference = confusion_matrix(true.numpy(), pred.numpy(), labels=list(range(7)))  # [true][pred]
    assert state["cm"].tolist() == reference.T.tolist()  # ours is cm[pred][true]
