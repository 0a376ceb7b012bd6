"""Store.set_async: an asyncio awaitable that completes when the write is durable."""

import asyncio
import signal
import subprocess
import sys
import textwrap

import pytest
import ussdb


def rec(user, campaign, variation="Control"):
    return {"userId": user, "campaignKey": campaign, "variationName": variation}


@pytest.mark.parametrize("shared", [True, False])
def test_a_thousand_writes_in_flight_share_a_few_fsyncs(store_dir, shared):
    n = 1000

    async def main(s):
        await asyncio.gather(*(s.set_async(rec("u%d" % i, "c")) for i in range(n)))

    with ussdb.Store(store_dir, durability="immediate", shared=shared) as s:
        before = s.stats()["fsyncs"]
        asyncio.run(main(s))
        stats = s.stats()
        assert stats["mappings"] == n
        # Every write is appended before the first await; the commit thread fsyncs while they are appended (more
        # often when appends are slow, as in the multi-process mode or on a busy machine) and each fsync covers
        # all appended so far. One fsync each would be 1000; a few dozen are usual.
        assert 1 <= stats["fsyncs"] - before <= 200, stats
        for i in range(n):
            assert s.get("u%d" % i, "c") == rec("u%d" % i, "c")


def test_the_awaitable_completes_only_after_an_fsync(store_dir):
    async def main(s):
        for i in range(20):
            before = s.stats()["fsyncs"]
            await s.set_async(rec("u%d" % i, "c"))
            # Under "immediate" nothing but an fsync that began after the append makes the write durable.
            assert s.stats()["fsyncs"] > before

    with ussdb.Store(store_dir, durability="immediate") as s:
        asyncio.run(main(s))


def test_awaited_writes_survive_sigkill(store_dir):
    # What the awaitable promises: once it completed, the write survives the process dying at once.
    child = textwrap.dedent(
        """
        import asyncio, os, signal, sys, ussdb

        async def main(s):
            for batch in range(10):
                await asyncio.gather(*(
                    s.set_async({"userId": "u%d" % (batch * 100 + i), "campaignKey": "c", "variationName": "V"})
                    for i in range(100)
                ))
            print("acked", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main(ussdb.Store(sys.argv[1], durability="immediate")))
        """
    )
    p = subprocess.run([sys.executable, "-c", child, store_dir], capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert p.stdout.strip() == "acked"
    with ussdb.Store(store_dir) as s:
        for i in range(1000):
            assert s.get("u%d" % i, "c") == rec("u%d" % i, "c", "V")


@pytest.mark.parametrize("durability", ["periodic", "never"])
def test_without_immediate_durability_the_awaitable_is_done_at_once(store_dir, durability):
    async def main(s):
        pending = s.set_async(rec("u", "c"))
        assert pending.done()
        await pending

    with ussdb.Store(store_dir, durability=durability) as s:
        asyncio.run(main(s))
        assert s.get("u", "c") == rec("u", "c")


def test_outside_a_running_loop_it_raises_and_writes_nothing(store_dir):
    with ussdb.Store(store_dir, durability="immediate") as s:
        with pytest.raises(RuntimeError):
            s.set_async(rec("u", "c"))
        assert s.get("u", "c") is None


@pytest.mark.parametrize("durability", ["immediate", "periodic"])
def test_a_refused_write_raises_the_engine_error_when_awaited(store_dir, durability):
    async def main(s):
        with pytest.raises(ussdb.Error) as e:
            await s.set_async(rec("", "c"))
        assert "user_id" in str(e.value)
        with pytest.raises(ValueError, match="campaignKey"):
            s.set_async({"userId": "u"})

    with ussdb.Store(store_dir, durability=durability) as s:
        asyncio.run(main(s))
        assert s.stats()["mappings"] == 0


def test_a_cancelled_waiter_keeps_its_write_and_disturbs_nothing(store_dir):
    async def main(s):
        cancelled = asyncio.ensure_future(s.set_async(rec("gone", "c")))
        cancelled.cancel()
        await asyncio.gather(*(s.set_async(rec("u%d" % i, "c")) for i in range(50)))
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        # Let the commit thread's completion of the cancelled one reach this loop: it must be ignored.
        await asyncio.sleep(0.05)

    with ussdb.Store(store_dir, durability="immediate") as s:
        asyncio.run(main(s))
        # The write was appended when set_async was called; cancelling only stops the waiting.
        assert s.get("gone", "c") == rec("gone", "c")
        assert s.stats()["mappings"] == 51


def test_closing_the_store_under_waiting_writes_completes_them(store_dir):
    async def main(s):
        waiting = [s.set_async(rec("u%d" % i, "c")) for i in range(200)]
        s.close()
        done = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), timeout=30)
        # close() syncs: the writes it covered are durable, and none is left hanging.
        assert all(r is None for r in done), [r for r in done if r is not None][:3]

    s = ussdb.Store(store_dir, durability="immediate")
    asyncio.run(main(s))
    with ussdb.Store(store_dir) as s:
        assert s.stats()["mappings"] == 200


def test_many_loops_in_threads_at_once(store_dir):
    import threading

    errors = []

    def worker(t):
        async def main():
            await asyncio.gather(*(s.set_async(rec("t%d-%d" % (t, i), "c")) for i in range(200)))

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    with ussdb.Store(store_dir, durability="immediate") as s:
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert s.stats()["mappings"] == 800


def test_first_use_from_many_threads_at_once_starts_one_notifier(store_dir):
    # The first set_async of a process starts the notifier thread; threads racing to it must neither deadlock
    # (Thread.start lets go of the GIL) nor leave a write without a notifier. A fresh process, so this is the
    # first use.
    child = textwrap.dedent(
        """
        import asyncio, sys, threading, ussdb

        s = ussdb.Store(sys.argv[1], durability="immediate")
        barrier = threading.Barrier(8)

        def work(t):
            async def main():
                barrier.wait()
                await asyncio.gather(*(
                    s.set_async({"userId": "t%d-%d" % (t, i), "campaignKey": "c", "variationName": "V"})
                    for i in range(50)
                ))
            asyncio.run(main())

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(s.stats()["mappings"], sum(t.name == "ussdb-notify" for t in threading.enumerate()), flush=True)
        """
    )
    p = subprocess.run([sys.executable, "-c", child, store_dir], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["400", "1"], p.stdout
