"""gateway/tasks.py: stop_task cancels a background task and waits until it has finished."""

from __future__ import annotations

import asyncio

from gateway.tasks import stop_task


def test_stop_task_cancels_waits_and_absorbs_the_cancellation() -> None:
    cleaned: list[str] = []

    async def loop_forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits still runs to the end
            cleaned.append("done")

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(loop_forever())
        await asyncio.sleep(0)
        await stop_task(task)
        assert task.cancelled() and cleaned == ["done"]
        await stop_task(task)  # already finished: nothing more
        await stop_task(None)

    asyncio.run(main())


def test_stop_task_on_a_task_that_already_ended() -> None:
    async def main() -> None:
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        await task
        await stop_task(task)
        assert task.done() and not task.cancelled()

    asyncio.run(main())
