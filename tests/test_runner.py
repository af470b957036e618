from evloop.bus import Bus, Subscriber
from evloop.runner import CallbacksRunner


class Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def on_batch_start(self, state):
        self.log.append(("start", self.name))

    def on_batch_end(self, state):
        self.log.append(("end", self.name))


def test_phases_then_insertion_order_same_for_start_and_end():
    log = []
    runner = CallbacksRunner()
    runner.add_epilogue(Recorder("e1", log))
    runner.add_callbacks([Recorder("m1", log), Recorder("m2", log)])
    runner.add_prologue(Recorder("p1", log))
    runner.add_epilogues([Recorder("e2", log)])
    runner.add_prologues([Recorder("p2", log)])
    runner("on_batch_start")
    runner("on_batch_end")
    order = ["p1", "p2", "m1", "m2", "e1", "e2"]
    assert log == [("start", n) for n in order] + [("end", n) for n in order]


def test_callbacks_see_and_share_the_same_state_and_custom_events():
    seen = []

    class Writer:
        def on_custom(self, state, value):
            state["x"] = value

    class Reader:
        def on_custom(self, state, value):
            seen.append(state["x"])

    runner = CallbacksRunner()
    runner.add_callbacks([Writer(), Reader()])
    runner("on_custom", 42)
    assert seen == [42] and runner.state["x"] == 42


def test_add_callback_accepts_a_list_as_the_tutorial_writes_it():
    log = []
    runner = CallbacksRunner()
    runner.add_callback([Recorder("a", log), Recorder("b", log)])
    runner("on_batch_end")
    assert log == [("end", "a"), ("end", "b")]


def test_adding_a_callback_after_dispatch_is_seen():
    log = []
    runner = CallbacksRunner()
    runner.add_callback(Recorder("a", log))
    runner("on_batch_end")
    runner.add_callback(Recorder("b", log))
    runner("on_batch_end")
    assert log == [("end", "a"), ("end", "a"), ("end", "b")]


def test_subscribers_go_to_the_async_lane():
    class Sub(Subscriber):
        def handle(self, event):
            pass

    bus = Bus()
    runner = CallbacksRunner(bus)
    sub = Sub()
    runner.add_callback(sub)
    assert [s.owner for s in bus.subscriptions] == [sub]


def test_stable_ids_do_not_shift_when_callbacks_are_reordered():
    from evloop.callbacks import Counter, EpochMetricAvg

    first = CallbacksRunner()
    first.add_callbacks([Counter(), EpochMetricAvg("loss"), EpochMetricAvg("acc")])
    second = CallbacksRunner()
    second.add_prologue(EpochMetricAvg("acc"))
    second.add_callbacks([EpochMetricAvg("top5"), EpochMetricAvg("loss"), Counter()])
    assert set(first.named_callbacks()) == {
        "Counter",
        "EpochMetricAvg[loss]",
        "EpochMetricAvg[acc]",
    }
    first.named_callbacks()["EpochMetricAvg[loss]"].mean = 7.0
    first.named_callbacks()["EpochMetricAvg[loss]"].count = 2
    second.load_state_dict(first.state_dict())
    loss = second.named_callbacks()["EpochMetricAvg[loss]"]
    acc = second.named_callbacks()["EpochMetricAvg[acc]"]
    assert (loss.mean, loss.count) == (7.0, 2)
    assert (acc.mean, acc.count) == (None, 0)
