"""The dynamic batcher on its own: batches formed, padded, bounded, and failures kept to their request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from onnx_pipeline.errors import InputError
from onnx_pipeline.serve.batching import DynamicBatcher, OverloadedError


class Recorder:
    """A model that doubles its input and records the batch sizes it was given; NaN rows make it fail."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if np.isnan(batch).any():
            raise InputError("NaN in the batch")
        self.batches.append(len(batch))
        return batch * 2.0


def run(coroutine: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine(), timeout=30))


def make(model: Recorder, **options: Any) -> DynamicBatcher:
    settings = {"max_batch_size": 4, "max_delay_s": 0.2, "capacity": 16, **options}
    return DynamicBatcher("m", model, **settings)


def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    model = Recorder()
    seen: list[tuple[int, int, float]] = []

    async def main() -> list[np.ndarray]:
        batcher = make(model, observer=lambda rows, requests, s: seen.append((rows, requests, s)))
        await batcher.start()
        rows = [np.full((1, 3), float(i), dtype=np.float32) for i in range(5)]
        outputs = await asyncio.gather(*(batcher.infer(r) for r in rows))
        await batcher.close()
        return outputs

    outputs = run(main)
    assert model.batches == [4, 1]  # 4 at once (the batch filled), the fifth after its 200 ms wait
    assert [(r, q) for r, q, _ in seen] == [(4, 4), (1, 1)]
    for index, output in enumerate(outputs):
        np.testing.assert_array_equal(output, np.full((1, 3), 2.0 * index))


def test_a_request_larger_than_the_rest_waits_for_the_next_batch() -> None:
    model = Recorder()

    async def main() -> None:
        batcher = make(model, max_delay_s=0.05)
        await batcher.start()
        await asyncio.gather(batcher.infer(np.ones((3, 2))), batcher.infer(np.ones((3, 2))))
        await batcher.close()

    run(main)
    assert model.batches == [3, 3]


def test_fixed_batch_models_get_padded_batches() -> None:
    model = Recorder()

    async def main() -> np.ndarray:
        batcher = make(model, pad_to=4, max_delay_s=0.0)
        await batcher.start()
        output = await batcher.infer(np.ones((1, 2), dtype=np.float32))
        await batcher.close()
        return output

    output = run(main)
    assert model.batches == [4] and output.shape == (1, 2)


def test_a_bad_request_fails_alone() -> None:
    model = Recorder()

    def bad_image() -> np.ndarray:
        raise InputError("not an image")

    async def main() -> list[Any]:
        batcher = make(model)
        await batcher.start()
        works: list[Any] = [
            np.ones((1, 2)),
            bad_image,  # fails while it is prepared
            lambda: np.full((1, 2), 3.0),
            np.full((1, 2), np.nan),  # fails the batch run: the others are rerun alone
        ]
        results = await asyncio.gather(*(batcher.infer(w) for w in works), return_exceptions=True)
        await batcher.close()
        return results

    results = run(main)
    np.testing.assert_array_equal(results[0], np.full((1, 2), 2.0))
    assert isinstance(results[1], InputError) and "not an image" in str(results[1])
    np.testing.assert_array_equal(results[2], np.full((1, 2), 6.0))
    assert isinstance(results[3], InputError) and "NaN" in str(results[3])


def test_a_full_queue_refuses_at_once() -> None:
    batcher = make(Recorder(), capacity=2)
    with batcher.admit(), batcher.admit():
        assert batcher.admitted == 2
        with pytest.raises(OverloadedError, match="retry later") as refused, batcher.admit():
            pass
        assert refused.value.retry_after_s >= 1 and refused.value.model == "m"
    assert batcher.admitted == 0
    with batcher.admit():  # the slots came back
        assert batcher.admitted == 1


def test_close_runs_what_is_waiting() -> None:
    model = Recorder()

    async def main() -> np.ndarray:
        batcher = make(model, max_delay_s=10.0)
        await batcher.start()
        pending = asyncio.ensure_future(batcher.infer(np.ones((1, 2))))
        await asyncio.sleep(0.05)
        await batcher.close()  # does not wait the 10 s batching window
        return await pending

    np.testing.assert_array_equal(run(main), np.full((1, 2), 2.0))
