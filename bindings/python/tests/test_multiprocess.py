"""The multi-process mode, which UserStorage and Store use by default: worker processes of one server
open one directory together, and a store opened before os.fork() refuses work in the child."""

import multiprocessing
import os

import pytest
import ussdb


def _write_then_read(path, user, seen):
    store = ussdb.Store(path)
    store.set({"userId": user, "campaignKey": "c", "variationName": "from-" + user})
    seen.put(store.get("parent", "c")["variationName"])
    store.close()


def test_processes_share_one_directory_and_read_each_others_writes(store_dir):
    store = ussdb.Store(store_dir)
    store.set({"userId": "parent", "campaignKey": "c", "variationName": "from-parent"})
    ctx = multiprocessing.get_context("spawn")
    seen = ctx.Queue()
    children = [ctx.Process(target=_write_then_read, args=(store_dir, "child-%d" % i, seen)) for i in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert [seen.get(timeout=5) for _ in children] == ["from-parent"] * 3
    for i in range(3):
        assert store.get("child-%d" % i, "c")["variationName"] == "from-child-%d" % i
    store.close()


def test_single_process_mode_refuses_a_second_process(store_dir):
    store = ussdb.Store(store_dir)
    with pytest.raises(ussdb.Error, match=r"shared\(true\)|multi-process"):
        ussdb.Store(store_dir, shared=False)
    store.close()


def test_a_store_opened_before_fork_refuses_reads_in_the_child_and_names_the_fix(store_dir):
    store = ussdb.UserStorage(store_dir)
    store.set({"userId": "u", "campaignKey": "c", "variationName": "v"})
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            store.get("u", "c")
            message = b"no error"
        except ussdb.Error as e:
            message = str(e).encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    message = os.read(read, 4096).decode()
    os.close(read)
    assert os.waitpid(pid, 0)[1] == 0
    assert "forked" in message and "post_fork" in message and "lazy-apps" in message, message
    # The parent goes on, and the child's exit released none of its locks.
    assert store.get("u", "c")["variationName"] == "v"
    store.set({"userId": "u2", "campaignKey": "c", "variationName": "w"})
    store.close()


@pytest.mark.parametrize("shared", [False, True])
def test_a_child_that_closes_its_copy_does_not_keep_the_parents_lock(store_dir, shared):
    store = ussdb.Store(store_dir, shared=shared)
    store.set({"userId": "u", "campaignKey": "c", "variationName": "v"})
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(done_w)
        store.close()  # the child's copy: closes the child's descriptors, touches nothing else
        os.write(ready_w, b"1")
        os.read(done_r, 1)  # stays alive until the parent has reopened
        os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        assert os.read(ready_r, 1) == b"1"
        store.close()
        # The child lives on, and a new single-process opener (which the multi-process mode's locks would refuse)
        # gets the store: no lock is left in the child.
        again = ussdb.Store(store_dir, shared=False)
        assert again.get("u", "c")["variationName"] == "v"
        again.close()
    finally:
        os.write(done_w, b"1")
        os.close(done_w)
        os.close(ready_r)
        assert os.waitpid(pid, 0)[1] == 0
