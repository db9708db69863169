"""What the CLI prints off a terminal (job logs, files): no colour codes, no unactionable Ray line."""

import io

from rayseg.cli import PlainText


def test_plain_text_drops_colour_codes_and_the_preemption_watcher_line():
    out = io.StringIO()
    stream = PlainText(out)
    stream.write("\x1b[36m(TrainController pid=9)\x1b[0m [2026-11-29 20:01:43,816 E 9 10] core_worker.cc:2465: Actor "
                 "with class name: 'PreemptionWatcher' and ID: '1dd5' has constructor arguments in the object store "
                 "and max_restarts > 0.\n")
    stream.write("\x1b[36m(RayTrainWorker pid=1)\x1b[0m [rayseg] epoch 1/2 step 4/4\n")
    stream.write("\x1b[33m(raylet)\x1b[0m [2026-11-29 E 1 2] worker_pool.cc:1: a real error\n")
    assert out.getvalue() == ("(RayTrainWorker pid=1) [rayseg] epoch 1/2 step 4/4\n"
                              "(raylet) [2026-11-29 E 1 2] worker_pool.cc:1: a real error\n")
    assert stream.isatty() is False  # everything else is the wrapped stream's
