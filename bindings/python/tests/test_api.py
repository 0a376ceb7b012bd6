import os
import pathlib
import threading

import pytest
import ussdb


def rec(user, campaign, variation="Control", goals=None, key="goalIdentifier"):
    d = {"userId": user, "campaignKey": campaign, "variationName": variation}
    if goals is not None:
        d[key] = goals
    return d


def test_error_is_an_exception_subclass():
    assert issubclass(ussdb.Error, Exception)
    assert isinstance(ussdb.__version__, str)


@pytest.mark.parametrize("durability", ["periodic", "immediate", "never"])
def test_round_trip_survives_reopen(store_dir, durability):
    with ussdb.Store(store_dir, durability=durability) as s:
        assert s.get("u1", "c1") is None
        s.set(rec("u1", "c1"))
        s.set(rec("u1", "c2", "Variation-1", "g1_vwo_g2"))
        s.set(rec("u2", "c1", "Variation-1"))
        assert s.get("u1", "c1") == rec("u1", "c1")
        assert s.get("u1", "c2") == rec("u1", "c2", "Variation-1", "g1_vwo_g2")
    with ussdb.Store(store_dir, durability=durability) as s:
        assert s.get("u1", "c1") == rec("u1", "c1")
        assert s.get("u1", "c2") == rec("u1", "c2", "Variation-1", "g1_vwo_g2")
        assert s.get("u2", "c1") == rec("u2", "c1", "Variation-1")
        assert s.get("u2", "c2") is None


def test_set_overwrites_and_keeps_goal_text_byte_for_byte(store_dir):
    odd = "é_vwo_ _vwo__vwo_\u2603\x00end"
    with ussdb.Store(store_dir) as s:
        s.set(rec("u", "c", "A", "g1"))
        s.set(rec("u", "c", "B", odd))
        assert s.get("u", "c") == rec("u", "c", "B", odd)
        s.set(rec("u", "c", "B", ""))
        assert s.get("u", "c") == rec("u", "c", "B", "")
        # None and an absent key both mean "no goals".
        s.set(rec("u", "c", "B", None))
        assert s.get("u", "c") == rec("u", "c", "B")


def test_unicode_and_nul_keys(store_dir):
    with ussdb.Store(store_dir) as s:
        s.set(rec("ユーザー", "キャンペーン", "变体"))
        assert s.get("ユーザー", "キャンペーン") == rec("ユーザー", "キャンペーン", "变体")
        s.set(rec("a\x00b", "c"))
        assert s.get("a\x00b", "c") == rec("a\x00b", "c")
        assert s.get("a", "c") is None
        # A lone surrogate has no UTF-8 form: Python's own error, before the engine is reached.
        with pytest.raises(UnicodeEncodeError):
            s.get("\ud800", "c")
        with pytest.raises(UnicodeEncodeError):
            s.set(rec("\ud800", "c"))


def test_set_accepts_the_sdk_shape_and_extra_keys(store_dir):
    with ussdb.Store(store_dir) as s:
        s.set({**rec("u", "c", "V", "a_vwo_b", key="goalIdentifiers"), "somethingElse": 1})
        assert s.get("u", "c") == rec("u", "c", "V", "a_vwo_b")
        # The SDK's key is the one it updates, so it wins over a stale engine-shaped one.
        s.set({**rec("u", "c", "V", "old"), "goalIdentifiers": "old_vwo_new"})
        assert s.get("u", "c")["goalIdentifier"] == "old_vwo_new"


def test_delete_forget_user_campaigns_of(store_dir):
    with ussdb.Store(store_dir) as s:
        for c in ("c1", "c2", "c3"):
            s.set(rec("u", c))
        s.set(rec("other", "c1"))
        assert sorted(r["campaignKey"] for r in s.campaigns_of("u")) == ["c1", "c2", "c3"]
        assert s.delete("u", "c1") is True
        assert s.delete("u", "c1") is False
        assert s.get("u", "c1") is None
        assert s.forget_user("u") == 2
        assert s.campaigns_of("u") == []
        assert s.forget_user("u") == 0
        assert s.get("other", "c1") == rec("other", "c1")
    with ussdb.Store(store_dir) as s:
        assert s.campaigns_of("u") == []
        assert s.campaigns_of("other") == [rec("other", "c1")]


def test_sync_and_stats(store_dir):
    with ussdb.Store(store_dir) as s:
        for i in range(200):
            s.set(rec("u%d" % (i % 20), "c", "V%d" % i))
        s.delete("u0", "c")
        s.sync()
        stats = s.stats()
        assert stats["mappings"] == 19
        assert stats["sets"] == 200 and stats["deletes"] == 1
        assert stats["segments"] >= 1
        assert stats["disk_bytes"] >= stats["live_bytes"] > 0
        assert stats["dead_bytes"] > 0
        assert stats["space_amplification"] >= 1.0
        for i in range(1, 20):
            assert s.get("u%d" % i, "c") == rec("u%d" % i, "c", "V%d" % (180 + i))
    with ussdb.Store(store_dir) as s:
        assert s.get("u19", "c") == rec("u19", "c", "V199")
        assert s.get("u0", "c") is None
        assert s.stats()["mappings"] == 19


def test_small_segments_roll_over(store_dir):
    with ussdb.Store(store_dir, segment_size=64 * 1024) as s:
        for i in range(3000):
            s.set(rec("user-%05d" % i, "campaign", "Variation-%d" % (i % 2), "g" * 20))
    with ussdb.Store(store_dir, segment_size=64 * 1024) as s:
        for i in range(0, 3000, 7):
            assert s.get("user-%05d" % i, "campaign")["variationName"] == "Variation-%d" % (i % 2)


@pytest.mark.parametrize(
    "user,campaign",
    [("", "c"), ("u", ""), ("u" * 1025, "c"), ("u", "c" * 1025)],
)
def test_invalid_keys_raise_engine_error(store_dir, user, campaign):
    with ussdb.Store(store_dir) as s:
        for call in (lambda: s.get(user, campaign), lambda: s.set(rec(user, campaign))):
            with pytest.raises(ussdb.Error) as e:
                call()
            assert str(e.value), "the engine's message is carried"
        with pytest.raises(ussdb.Error):
            s.delete(user, campaign)


def test_longest_keys_are_fine(store_dir):
    with ussdb.Store(store_dir) as s:
        s.set(rec("u" * 1024, "c" * 1024))
        assert s.get("u" * 1024, "c" * 1024) == rec("u" * 1024, "c" * 1024)


def test_oversized_value_raises_engine_error(store_dir):
    with ussdb.Store(store_dir) as s:
        with pytest.raises(ussdb.Error):
            s.set(rec("u", "c", "V", "g" * (2 << 20)))
        assert s.get("u", "c") is None
        s.set(rec("u", "c"))  # still usable
        assert s.get("u", "c") == rec("u", "c")


def test_malformed_records_raise_python_errors(store_dir):
    with ussdb.Store(store_dir) as s:
        with pytest.raises(ValueError, match="variationName"):
            s.set({"userId": "u", "campaignKey": "c"})
        with pytest.raises(TypeError, match="userId"):
            s.set({"userId": 5, "campaignKey": "c", "variationName": "V"})
        with pytest.raises(TypeError):
            s.set(rec("u", "c", "V", 5))
        with pytest.raises(TypeError):
            s.set([("userId", "u")])
        with pytest.raises(TypeError):
            s.get(1, "c")
        assert s.get("u", "c") is None


def test_bad_options(store_dir):
    with pytest.raises(ValueError, match="durability"):
        ussdb.Store(store_dir, durability="sometimes")
    with pytest.raises(OverflowError):
        ussdb.Store(store_dir, segment_size=-1)
    with pytest.raises(TypeError):
        ussdb.UserStorage(42)


def test_open_error_is_engine_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ussdb.Error) as e:
        ussdb.Store(str(blocker / "store"))
    assert str(e.value)


def test_context_manager_closes_even_on_exception(store_dir):
    with pytest.raises(RuntimeError):
        with ussdb.Store(store_dir) as s:
            s.set(rec("u", "c"))
            raise RuntimeError("boom")
    assert s.closed
    with pytest.raises(ussdb.Error, match="closed"):
        s.get("u", "c")
    with pytest.raises(ussdb.Error, match="closed"):
        s.set(rec("u", "c"))
    s.close()  # twice is fine
    with ussdb.Store(store_dir) as s2:
        assert s2.get("u", "c") == rec("u", "c")


def test_close_then_reopen_same_process(store_dir):
    s = ussdb.Store(store_dir)
    s.set(rec("u", "c"))
    s.close()
    s = ussdb.Store(store_dir)
    assert s.get("u", "c") == rec("u", "c")
    s.close()


def test_user_storage_over_path_pathlike_and_store(store_dir):
    with ussdb.UserStorage(pathlib.Path(store_dir)) as us:
        us.set(rec("u", "c", "V", "g", key="goalIdentifiers"))
        assert us.get("u", "c") == rec("u", "c", "V", "g", key="goalIdentifiers")
        assert us.get("u", "nope") is None
        assert bool(us), "the SDK tests `if not user_storage`"
    with ussdb.Store(store_dir) as s:
        us = ussdb.UserStorage(s)
        assert us.store is s
        assert us.get("u", "c")["goalIdentifiers"] == "g"
        s.set(rec("u", "c2", "W"))
        assert us.get("u", "c2") == rec("u", "c2", "W")
    with pytest.raises(ussdb.Error, match="closed"):
        us.get("u", "c")


def test_store_shared_by_threads(store_dir):
    n_threads, per = 8, 500
    errors = []
    with ussdb.Store(store_dir, durability="immediate") as s:
        barrier = threading.Barrier(n_threads)

        def work(t):
            try:
                barrier.wait()
                for i in range(per):
                    s.set(rec("t%d-%d" % (t, i), "c", "V%d" % t))
                    assert s.get("t%d-%d" % (t, i), "c")["variationName"] == "V%d" % t
            except BaseException as e:
                errors.append(e)

        ts = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors
    with ussdb.Store(store_dir) as s:
        for t in range(n_threads):
            for i in range(per):
                assert s.get("t%d-%d" % (t, i), "c") == rec("t%d-%d" % (t, i), "c", "V%d" % t)


def test_close_while_other_threads_work(store_dir):
    # Closing under running calls must end in clean ussdb.Errors, never a crash.
    s = ussdb.Store(store_dir)
    stop = threading.Event()
    outcomes = []

    def hammer():
        n = 0
        while not stop.is_set():
            try:
                s.set(rec("u%d" % n, "c"))
                s.get("u%d" % n, "c")
            except ussdb.Error as e:
                outcomes.append(str(e))
                return
            n += 1

    ts = [threading.Thread(target=hammer) for _ in range(4)]
    for t in ts:
        t.start()
    s.close()
    stop.set()
    for t in ts:
        t.join()
    assert all("closed" in o for o in outcomes)


def test_repr_and_path(store_dir):
    with ussdb.Store(store_dir) as s:
        assert os.fspath(s.path) == store_dir
        assert "open" in repr(s)
    assert "closed" in repr(s)


@pytest.mark.parametrize("durability", ["periodic", "immediate"])
def test_acknowledged_sets_survive_sigkill(store_dir, durability):
    # "periodic" promises that a set which returned survives the process dying; SIGKILL leaves no
    # chance to flush or close.
    import signal
    import subprocess
    import sys
    import textwrap

    child = textwrap.dedent(
        """
        import os, signal, sys, ussdb
        s = ussdb.Store(sys.argv[1], durability=sys.argv[2])
        for i in range(2000):
            s.set({"userId": "u%d" % i, "campaignKey": "c", "variationName": "V%d" % (i % 2)})
        print("acked", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    p = subprocess.run([sys.executable, "-c", child, store_dir, durability], capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert p.stdout.strip() == "acked"
    with ussdb.Store(store_dir) as s:
        for i in range(2000):
            assert s.get("u%d" % i, "c") == rec("u%d" % i, "c", "V%d" % (i % 2))


def test_gil_is_released_during_engine_calls(store_dir):
    # With durability="immediate" a set waits for fdatasync, and writers that arrive meanwhile share
    # the next one (group commit). If the binding held the GIL through set, no two threads could be
    # inside the engine at once and every set would pay its own fsync.
    n_threads, per = 8, 40
    with ussdb.Store(store_dir, durability="immediate") as s:
        before = s.stats()["fsyncs"]
        barrier = threading.Barrier(n_threads)

        def work(t):
            barrier.wait()
            for i in range(per):
                s.set(rec("t%d-%d" % (t, i), "c"))

        ts = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        stats = s.stats()
        assert stats["mappings"] == n_threads * per
        assert stats["fsyncs"] - before < n_threads * per, stats


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_store_opened_before_fork_refuses_work_in_the_child(store_dir):
    # Prefork servers (gunicorn --preload, multiprocessing's fork) hand children copies of an open
    # engine; letting them write would corrupt the parent's log.
    with ussdb.Store(store_dir) as s:
        s.set(rec("u", "c"))
        us = ussdb.UserStorage(s)
        pid = os.fork()
        if pid == 0:  # child: report through the exit code, never return into pytest
            code = 0
            try:
                for call in (lambda: s.get("u", "c"), lambda: s.set(rec("x", "c")), lambda: us.get("u", "c")):
                    try:
                        call()
                        code |= 1
                    except ussdb.Error as e:
                        if "forked" not in str(e):
                            code |= 2
                s.close()
                del s, us
            except BaseException:
                code |= 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        # The parent's store is untouched and still works.
        assert s.get("u", "c") == rec("u", "c")
        assert s.get("x", "c") is None
        s.set(rec("y", "c"))
    with ussdb.Store(store_dir) as s:
        assert s.get("y", "c") == rec("y", "c")


def test_compact_reclaims_dead_bytes_and_keeps_data(store_dir):
    with ussdb.Store(store_dir, segment_size=64 * 1024, auto_compaction=False) as s:
        for round_ in range(5):
            for i in range(1000):
                s.set(rec("u%04d" % i, "c", "V%d" % round_, "g" * 30))
        for i in range(0, 1000, 2):
            s.delete("u%04d" % i, "c")
        before = s.stats()
        assert before["compactions"] == 0 and before["last_compaction_seconds"] is None
        s.compact()
        after = s.stats()
        assert after["compactions"] >= 1 and after["last_compaction_seconds"] >= 0
        assert after["reclaimed_bytes"] > 0
        assert after["dead_bytes"] < before["dead_bytes"]
        assert after["disk_bytes"] < before["disk_bytes"]
        assert after["mappings"] == 500
        for i in range(1000):
            expect = None if i % 2 == 0 else rec("u%04d" % i, "c", "V4", "g" * 30)
            assert s.get("u%04d" % i, "c") == expect
    with ussdb.Store(store_dir, segment_size=64 * 1024) as s:
        assert s.get("u0001", "c") == rec("u0001", "c", "V4", "g" * 30)
        assert s.get("u0000", "c") is None
        assert s.stats()["mappings"] == 500


def test_compaction_options(store_dir):
    with pytest.raises(ussdb.Error, match="compaction_threshold"):
        ussdb.Store(store_dir, compaction_threshold=1.5)
    with pytest.raises(TypeError):
        ussdb.Store(store_dir, "periodic", None, 0.5)  # keyword-only
    with ussdb.Store(store_dir, compaction_threshold=0.2, auto_compaction=False) as s:
        s.set(rec("u", "c"))
        assert s.get("u", "c") == rec("u", "c")
