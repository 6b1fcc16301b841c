"""A checkpoint written by several machines: each uploads its part, world rank 0 commits one
manifest listing every machine's files only once all have reported; restore takes a machine's
own ranks' files and the shared ones."""

import json
import time

import pytest

from entrypoint.durability import attempts, upload_process
from entrypoint.durability import checkpoints as ck
from entrypoint.durability import manifests as mf
from entrypoint.durability.sync import CheckpointSync
from entrypoint.io.storage import LocalStore


def node_folder(folder, step, ranks, shared=True):
    """What a machine's processes write at `step`: the shared files on node 0, each rank's RNG state."""
    folder.mkdir(parents=True)
    if shared:
        (folder / "model.safetensors").write_bytes(bytes([step]) * 1000)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    for rank in ranks:
        (folder / f"rng_state_{rank}.pth").write_bytes(bytes([rank]) * 10)
    return folder


def two_machines(tmp_path, store, generation=1, **kwargs):
    main = CheckpointSync(store, tmp_path / "staging0", generation, keep_last=5, node=0, nodes=2, **kwargs)
    other = CheckpointSync(store, tmp_path / "staging1", generation, keep_last=5, node=1, nodes=2, **kwargs)
    return main, other


def save(tmp_path, main, other, step):
    main.submit(step, node_folder(tmp_path / "n0" / f"checkpoint-{step}", step, (0, 1)))
    other.submit(step, node_folder(tmp_path / "n1" / f"checkpoint-{step}", step, (2, 3), shared=False))


def test_one_manifest_lists_every_machines_files_once_all_reported(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    main, other = two_machines(tmp_path, store)
    save(tmp_path, main, other, 4)
    assert other.wait(30)
    assert not main.wait(1.0)  # world rank 0 waits for the other machine's report...
    assert mf.latest_complete(ck.scan(store)) is None  # ...and commits nothing meanwhile
    for report in other.take_reports():
        main.deliver(report)
    assert main.wait(30)
    assert main.stats.durable_step == 4
    committed = ck.read_manifest(store, mf.store_name(4, 1))
    assert set(committed["files"]) == {
        "model.safetensors",
        "trainer_state.json",
        "rng_state_0.pth",
        "rng_state_1.pth",
        "rng_state_2.pth",
        "rng_state_3.pth",
    }
    assert committed["files"]["rng_state_3.pth"]["sha256"] == mf.sha256(tmp_path / "n1/checkpoint-4/rng_state_3.pth")


def test_a_part_that_never_arrives_leaves_the_checkpoint_incomplete_and_the_previous_one_is_used(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    main, other = two_machines(tmp_path, store, upload_timeout_s=2.0)
    save(tmp_path, main, other, 4)
    assert other.wait(30)
    for report in other.take_reports():
        main.deliver(report)
    assert main.wait(30) and main.stats.durable_step == 4
    # step 8: the other machine dies during its upload (its report never comes)
    main.submit(8, node_folder(tmp_path / "n0" / "checkpoint-8", 8, (0, 1)))
    assert main.wait(30)
    assert main.stats.durable_step == 4 and main.stats.failures == 1
    found = {c.step: c.complete for c in ck.scan(store)}
    assert found == {8: False, 4: True}
    step, folder = ck.restore(store, tmp_path / "restored")
    assert step == 4


def test_a_failed_part_fails_the_commit_at_once(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    main, _ = two_machines(tmp_path, store, upload_timeout_s=60.0)
    main.submit(4, node_folder(tmp_path / "n0" / "checkpoint-4", 4, (0, 1)))
    main.deliver({"step": 4, "node": 1, "files": None, "error": "node 1: S3 said no"})
    assert main.wait(10)  # not the 60 s timeout
    assert main.stats.durable_step is None and mf.latest_complete(ck.scan(store)) is None


def test_parts_that_disagree_on_a_shared_file_are_not_committed(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    main, other = two_machines(tmp_path, store)
    main.submit(4, node_folder(tmp_path / "n0" / "checkpoint-4", 4, (0,)))
    other.submit(4, node_folder(tmp_path / "n1" / "checkpoint-4", 5, (1,)))  # its own model.safetensors
    assert other.wait(30)
    for report in other.take_reports():
        main.deliver(report)
    assert main.wait(30)
    assert main.stats.durable_step is None and main.stats.failures == 1


def test_every_part_gets_a_report_even_one_skipped_for_a_newer_checkpoint(tmp_path):
    class SlowStore(LocalStore):
        def upload_file(self, path, key):
            time.sleep(0.05)
            super().upload_file(path, key)

    other = CheckpointSync(SlowStore(str(tmp_path / "store")), tmp_path / "staging1", 1, keep_last=5, node=1, nodes=2)
    for step in range(1, 6):
        other.submit(step, node_folder(tmp_path / "n1" / f"checkpoint-{step}", step, (1,), shared=False))
    assert other.wait(30)
    reports = {r["step"]: r for r in other.take_reports()}
    assert sorted(reports) == [1, 2, 3, 4, 5]  # world rank 0 never waits for a part that is not coming
    skipped = [s for s, r in reports.items() if r["error"]]
    assert skipped and all("skipped it for the newer checkpoint" in reports[s]["error"] for s in skipped)
    assert reports[5]["files"] == {
        "rng_state_1.pth": {"size": 10, "sha256": mf.sha256(tmp_path / "n1/checkpoint-5/rng_state_1.pth")}
    }


def test_a_stale_attempt_commits_nothing_from_the_parts(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    generation = attempts.claim_generation(store, "a")
    attempts.claim_generation(store, "b")  # a newer attempt took over
    main, other = two_machines(tmp_path, store, generation)
    save(tmp_path, main, other, 4)
    assert other.wait(30)
    for report in other.take_reports():
        main.deliver(report)
    assert main.wait(30)
    assert main.superseded and mf.latest_complete(ck.scan(store)) is None


def test_the_upload_process_uploads_a_part_without_committing(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    other = CheckpointSync(
        store, tmp_path / "staging1", 1, keep_last=5, node=1, nodes=2, uploader=upload_process.start()
    )
    try:
        other.submit(4, node_folder(tmp_path / "n1" / "checkpoint-4", 4, (2,), shared=False))
        assert other.wait(60)
    finally:
        other.close()
    (report,) = other.take_reports()
    assert set(report["files"]) == {"rng_state_2.pth"} and report["error"] is None
    assert (store.root / mf.store_name(4, 1) / "rng_state_2.pth").exists()
    assert not (store.root / mf.store_name(4, 1) / mf.MANIFEST).exists()


@pytest.mark.parametrize(
    ("rel", "rank"),
    [
        ("rng_state_3.pth", 3),
        ("rng_state.pth", None),
        ("model.safetensors", None),
        ("global_step40/zero_pp_rank_5_mp_rank_00_optim_states.pt", 5),
        ("global_step40/bf16_zero_pp_rank_12_mp_rank_00_optim_states.pt", 12),
        ("global_step40/mp_rank_00_model_states.pt", None),
    ],
)
def test_rank_of_a_checkpoint_file(rel, rank):
    assert mf.rank_of(rel) == rank


def test_restore_on_a_machine_takes_its_own_ranks_files_and_the_shared_ones(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    main, other = two_machines(tmp_path, store)
    save(tmp_path, main, other, 4)
    assert other.wait(30)
    for report in other.take_reports():
        main.deliver(report)
    assert main.wait(30)
    step, folder = ck.restore(store, tmp_path / "node1", ranks=(2, 3))
    assert step == 4
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.safetensors",
        "rng_state_2.pth",
        "rng_state_3.pth",
        "trainer_state.json",
    ]


def exchange(main, other):
    """share_parts by hand: the other machine's reports to world rank 0, world rank 0's news back."""
    for report in other.take_reports():
        main.deliver(report)


def test_retention_with_a_checkpoint_folder_on_each_machine_removes_every_machines_parts(tmp_path):
    # SageMaker with two instances: each has its own /opt/ml/checkpoints, synced into one S3 prefix
    here, there = LocalStore(str(tmp_path / "opt_ml_0")), LocalStore(str(tmp_path / "opt_ml_1"))
    main = CheckpointSync(here, tmp_path / "staging0", 1, keep_last=2, node=0, nodes=2)
    other = CheckpointSync(there, tmp_path / "staging1", 1, keep_last=2, node=1, nodes=2)
    for step in (4, 8, 12):
        save(tmp_path, main, other, step)
        assert other.wait(30)
        exchange(main, other)
        assert main.wait(30) and main.stats.durable_step == step
        for news in main.take_reports():
            other.apply_retention(news)
    # world rank 0 sees only its own files, yet it judged 4 complete and removed it everywhere
    assert [c.step for c in ck.scan(here)] == [12, 8]
    assert [c.step for c in mf.checkpoints_from(there.list(), {})] == [12, 8]
    # what the platform makes of both folders: the kept checkpoints complete, nothing else
    union = LocalStore(str(tmp_path / "s3_prefix"))
    for store in (here, there):
        for key in store.list():
            union.upload_file(store.root / key, key)
    assert [(c.step, c.complete) for c in ck.scan(union)] == [(12, True), (8, True)]


def test_a_machine_keeps_its_parts_that_world_rank_0_has_not_judged(tmp_path):
    there = LocalStore(str(tmp_path / "opt_ml_1"))
    other = CheckpointSync(there, tmp_path / "staging1", 2, keep_last=1, node=1, nodes=2)
    for step, generation in ((4, 1), (6, 2), (8, 2), (12, 2)):  # 4: an earlier attempt's; 12: newer than the news
        there.upload_file(
            node_folder(tmp_path / f"n1-{step}", step, (1,), shared=False) / "rng_state_1.pth",
            f"{mf.store_name(step, generation)}/rng_state_1.pth",
        )
    other.apply_retention({"keep": [mf.store_name(8, 2)]})
    assert [c.step for c in mf.checkpoints_from(there.list(), {})] == [12, 8]
    # an S3 prefix is one store for every machine: world rank 0's retention covered it already
    assert mf.parts_to_delete(mf.checkpoints_from(there.list(), {}), [], 2) == []


def test_with_files_elsewhere_completes_a_checkpoint_only_with_the_listed_sizes():
    manifest = {"format": mf.FORMAT, "files": {"a": {"size": 1}, "rng_state_1.pth": {"size": 10}}}
    cp = mf.Checkpoint(mf.store_name(4, 1), 4, 1, {"a": 1, mf.MANIFEST: 5}, manifest)
    assert not cp.complete
    assert mf.with_files_elsewhere([cp], {cp.name: {"rng_state_1.pth": 10}})[0].complete
    assert not mf.with_files_elsewhere([cp], {cp.name: {"rng_state_1.pth": 9}})[0].complete
    assert not mf.with_files_elsewhere([cp], {"checkpoint-000000008-g0001": {"rng_state_1.pth": 10}})[0].complete
