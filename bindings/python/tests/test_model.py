"""Random operations checked against a dict model, across reopens and small segments."""

import random

import pytest
import ussdb

USERS = ["u%d" % i for i in range(40)]
CAMPAIGNS = ["c%d" % i for i in range(6)]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("segment_size", [4096, None])
def test_random_ops_match_a_dict(tmp_path, seed, segment_size):
    rng = random.Random(seed)
    path = str(tmp_path / "s")
    model = {}
    s = ussdb.Store(path, durability="never", segment_size=segment_size)
    try:
        for step in range(3000):
            op = rng.random()
            u, c = rng.choice(USERS), rng.choice(CAMPAIGNS)
            if op < 0.45:
                r = {"userId": u, "campaignKey": c, "variationName": rng.choice(["A", "B", "C" * rng.randint(1, 300)])}
                if rng.random() < 0.5:
                    r["goalIdentifier"] = "_vwo_".join(rng.sample(["g1", "g2", "g3", "g4"], rng.randint(1, 3)))
                s.set(r)
                model[(u, c)] = r
            elif op < 0.75:
                assert s.get(u, c) == model.get((u, c)), (step, u, c)
            elif op < 0.85:
                assert s.delete(u, c) == ((u, c) in model)
                model.pop((u, c), None)
            elif op < 0.88:
                gone = [k for k in model if k[0] == u]
                assert s.forget_user(u) == len(gone)
                for k in gone:
                    del model[k]
            elif op < 0.97:
                expect = sorted((r for k, r in model.items() if k[0] == u), key=lambda r: r["campaignKey"])
                assert s.campaigns_of(u) == expect
            else:
                s.close()
                s = ussdb.Store(path, durability="never", segment_size=segment_size)
        assert s.stats()["mappings"] == len(model)
        s.close()
        s = ussdb.Store(path, segment_size=segment_size)
        for u in USERS:
            for c in CAMPAIGNS:
                assert s.get(u, c) == model.get((u, c))
    finally:
        s.close()
