"""Access rules, tokens and sealed data: the pure parts of the access manager, no sockets."""

from __future__ import annotations

import os
import stat

import pytest

from aiosd import crypto
from aiosd.access import ROOT, AccessRules, Principal, grantee_key
from aiosd.auth import ANON, TokenStore
from aiosd.errors import AiosError

A = Principal(17, "math", "math", parent=0)
B = Principal(18, "rec", "rec", parent=0)
C = Principal(19, "travel", "team", parent=17)
A_AGAIN = Principal(40, "math", "math")  # the same agent run again: a new aid, the same name


@pytest.fixture
def rules() -> AccessRules:
    return AccessRules()


def test_owner_and_root_always_allowed_others_not(rules):
    for res in ("memory", "storage", "context", "audit", "snapshots", "crypto"):
        assert rules.allowed(A, res, A, "r") and rules.allowed(A, res, A, "w")
        assert rules.allowed(ROOT, res, A, "w")
        assert not rules.allowed(B, res, A, "r")
        assert not rules.allowed(B, res, A, "w")


def test_by_name_resources_follow_the_name_per_run_ones_the_aid(rules):
    # storage, audit and keys belong to the name: the same agent run again finds them
    for res in ("storage", "audit", "crypto"):
        assert rules.allowed(A_AGAIN, res, A, "r")
    # memory and context belong to one run
    for res in ("memory", "context", "snapshots"):
        assert not rules.allowed(A_AGAIN, res, A, "r")


def test_grant_read_only_then_rw_then_revoke_w(rules):
    rules.grant(A, "memory", B.aid, "r")
    assert rules.allowed(B, "memory", A, "r")
    assert not rules.allowed(B, "memory", A, "w")
    rules.grant(A, "memory", B.aid, "rw")  # replaces, not adds
    assert len(rules.grants) == 1
    assert rules.allowed(B, "memory", A, "w")
    assert rules.revoke(A, "memory", B.aid, "w") == 1
    assert rules.allowed(B, "memory", A, "r") and not rules.allowed(B, "memory", A, "w")
    assert rules.revoke(A, "memory", B.aid) == 1
    assert not rules.allowed(B, "memory", A, "r")
    assert rules.revoke(A, "memory", B.aid) == 0


def test_grant_is_on_the_granting_owner_only(rules):
    # B cannot grant itself (or anyone) A's memory: a grant is always on the caller's own
    rules.grant(B, "memory", B.aid, "rw")
    assert not rules.allowed(B, "memory", A, "r")
    rules.grant(B, "memory", C.aid, "rw")
    assert not rules.allowed(C, "memory", A, "r")
    # and revoking someone else's grant removes nothing
    rules.grant(A, "memory", C.aid, "r")
    assert rules.revoke(B, "memory", C.aid) == 1   # B's own grant to C, not A's
    assert rules.revoke(B, "memory", C.aid) == 0
    assert rules.allowed(C, "memory", A, "r")


def test_grantees_by_aid_name_group_and_everyone(rules):
    rules.grant(A, "storage", "name:rec", "r")
    assert rules.allowed(B, "storage", A, "r") and not rules.allowed(C, "storage", A, "r")
    rules.grant(A, "memory", "group:team", "r")
    assert rules.allowed(C, "memory", A, "r") and not rules.allowed(B, "memory", A, "r")
    rules.grant(A, "context", "*", "r")
    assert rules.allowed(B, "context", A, "r") and rules.allowed(C, "context", A, "r")
    assert not rules.allowed(B, "context", A, "w")


def test_a_grant_on_one_resource_opens_no_other(rules):
    rules.grant(A, "memory", B.aid, "rw")
    for res in ("storage", "context", "audit", "snapshots", "crypto"):
        assert not rules.allowed(B, res, A, "r")
    rules.grant(A, "tools:sql_query", B.aid, "r")
    assert rules.allowed(B, "tools:sql_query", A, "r")
    assert not rules.allowed(B, "tools:calculator", A, "r")


def test_grantee_and_argument_checks():
    assert grantee_key(5) == "aid:5" and grantee_key("5") == "aid:5"
    assert grantee_key("name:x") == "name:x" and grantee_key("*") == "*"
    for bad in (True, None, 1.5, "", "bogus", "name:", "uid:3", ["aid:1"]):
        with pytest.raises(AiosError) as exc:
            grantee_key(bad)
        assert exc.value.code == "EINVAL"
    rules = AccessRules()
    for res, rights in (("kernel", "r"), ("memory", "x"), ("memory", "rwx"), ("", "r")):
        with pytest.raises(AiosError) as exc:
            rules.grant(A, res, B.aid, rights)
        assert exc.value.code == "EINVAL"


def test_may_control_root_parent_self_only(rules):
    assert rules.may_control(ROOT, A)
    assert rules.may_control(A, C)          # C is A's child
    assert rules.may_control(C, C)
    assert not rules.may_control(B, A)
    assert not rules.may_control(C, A)      # a child does not control its parent
    assert not rules.may_control(B, C)


def test_may_set_priority_nobody_raises_without_root(rules):
    assert rules.may_set_priority(ROOT, A, 0, 20)
    assert rules.may_set_priority(A, A, 0, -5)
    assert not rules.may_set_priority(A, A, 0, 1)       # its own, raised
    assert rules.may_set_priority(A, C, 0, -1)          # its child's, lowered
    assert not rules.may_set_priority(A, C, 0, 3)       # its child's, raised
    assert not rules.may_set_priority(B, A, 5, 0)       # another's, even lowered


def test_drop_owner_takes_per_run_grants_and_grants_to_it(rules):
    rules.grant(A, "memory", B.aid, "r")
    rules.grant(A, "storage", B.aid, "r")   # by name: outlives the run
    rules.grant(B, "memory", A.aid, "r")
    rules.drop_owner(A)
    assert not rules.allowed(B, "memory", A, "r")
    assert not rules.allowed(A, "memory", B, "r")   # a new agent given aid 17 later gets nothing
    assert rules.allowed(B, "storage", A, "r")


# ---- tokens -------------------------------------------------------------------------------
def test_tokens_map_to_aids_and_die_with_the_agent():
    ts = TokenStore()
    tok = ts.issue(17)
    assert len(tok) == 64 and tok != ts.issue(18)
    assert ts.user_id(b"17", tok.encode()) == b"aid:17"
    assert ts.user_id(b"18", tok.encode()) == ANON          # another aid's token
    assert ts.user_id(b"17", b"0" * 64) == ANON
    assert ts.user_id(b"017", tok.encode()) == b"aid:17"    # same number, same agent
    assert ts.user_id(b"root", tok.encode()) == ANON
    assert ts.user_id(b"root", ts.root.encode()) == b"root"
    assert ts.user_id(b"\xff\xfe", b"\xff") == ANON
    assert ts.user_id(b"-1", b"") == ANON
    ts.revoke(17)
    assert ts.user_id(b"17", tok.encode()) == ANON          # a replayed token of an exited agent


def test_root_token_file_is_0600(tmp_path):
    ts = TokenStore()
    ts.write_root_file(tmp_path)
    st = (tmp_path / "root.token").stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (tmp_path / "root.token").read_text() == ts.root


# ---- sealed data --------------------------------------------------------------------------
def test_seal_round_trip_tamper_and_other_owner(tmp_path):
    master = crypto.load_master_key(tmp_path / "master.key")
    assert stat.S_IMODE(os.stat(tmp_path / "master.key").st_mode) == 0o600
    assert crypto.load_master_key(tmp_path / "master.key") == master  # kept, not regenerated
    blob = crypto.seal(master, "math", b"secret plan")
    assert b"secret plan" not in blob
    assert crypto.owner_of(blob) == "math"
    assert crypto.open_sealed(master, blob) == b"secret plan"
    assert crypto.seal(master, "math", b"secret plan") != blob       # a fresh nonce each time
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    with pytest.raises(AiosError) as exc:
        crypto.open_sealed(master, bytes(flipped))
    assert exc.value.code == "EINVAL"
    # relabelling the blob as another owner's does not open it under that owner's key
    relabelled = blob.replace(b"math", b"mbth", 1)
    assert crypto.owner_of(relabelled) == "mbth"
    with pytest.raises(AiosError):
        crypto.open_sealed(master, relabelled)
    # another home's master key opens nothing
    other = crypto.load_master_key(tmp_path / "other.key")
    with pytest.raises(AiosError):
        crypto.open_sealed(other, blob)
    assert crypto.agent_key(master, "math") != crypto.agent_key(master, "rec")
    for junk in (b"", b"AIOS1", b"AIOS1\xff\xff", b"not sealed at all"):
        with pytest.raises(AiosError) as exc:
            crypto.open_sealed(master, junk)
        assert exc.value.code == "EINVAL"
