"""Heartbeats, TLS and version skew, with real worker processes."""

import datetime
import os
import signal
import ssl
import subprocess
import sys
import time

import pytest

from conftest import remove_all_workers
from pydist import (ClusterManager, LaunchError, ProcessExitedException, WorkerConfig, addprocs,
                    everywhere,
                    cluster_cookie, myid, remotecall, remotecall_fetch, workers)
from pydist import settings
from pydist.heartbeat import configure_heartbeat
from pydist.process import STATE


@pytest.fixture
def short_heartbeat():
    remove_all_workers()
    old = settings.HEARTBEAT_TIMEOUT, settings.HEARTBEAT_INTERVAL
    yield
    remove_all_workers()
    configure_heartbeat(*old)


def test_frozen_worker_is_declared_dead_after_the_heartbeat_timeout(short_heartbeat):
    [pid] = addprocs(1, heartbeat_timeout=1.0)
    ospid = remotecall_fetch(os.getpid, pid)
    pending = remotecall(time.sleep, pid, 30)
    os.kill(ospid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ProcessExitedException):
            pending.fetch()
        assert time.monotonic() - started < 10
        assert pid not in workers()
    finally:
        os.kill(ospid, signal.SIGKILL)


def test_a_shorter_heartbeat_set_at_run_time_pings_quiet_links_before_judging(short_heartbeat):
    a, b = addprocs(2)
    assert remotecall_fetch(lambda other: remotecall_fetch(myid, other), b, a) == a  # b-a link
    time.sleep(1.5)                     # every link now quiet for longer than the new timeout
    configure_heartbeat(1.0, 0.1)
    everywhere("from pydist.heartbeat import configure_heartbeat; configure_heartbeat(1.0, 0.1)")
    time.sleep(2)
    assert sorted(workers()) == [a, b]
    assert remotecall_fetch(lambda other: remotecall_fetch(myid, other), b, a) == a


def test_busy_worker_is_not_declared_dead(short_heartbeat):
    [pid] = addprocs(1, heartbeat_timeout=1.0)
    busy = remotecall(lambda: sum(i * i for i in range(30_000_000)), pid)
    assert busy.fetch() > 0
    assert pid in workers()


# -- TLS ------------------------------------------------------------------------------------
def _make_ca(directory, name):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def write_key(key, path):
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    (directory / f"{name}-ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(who):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, who)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(ca_key, hashes.SHA256()))
        (directory / f"{who}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, directory / f"{who}.key")
        from pydist.tls import TLSConfig
        return TLSConfig(str(directory / f"{who}.pem"), str(directory / f"{who}.key"),
                         str(directory / f"{name}-ca.pem"))
    return issue


@pytest.fixture
def tls_off():
    remove_all_workers()
    yield
    remove_all_workers()
    STATE.tls = None


def test_tls_encrypts_every_link_including_worker_to_worker(tls_off, tmp_path):
    pytest.importorskip("cryptography")
    issue = _make_ca(tmp_path, "good")
    tls = issue("cluster")
    a, b = addprocs(2, tls=tls)
    assert isinstance(STATE.links[a].sock, ssl.SSLSocket)
    assert remotecall_fetch(lambda p: remotecall_fetch(myid, p), a, b) == b

    def peer_link_is_tls(p):
        from pydist.process import STATE as S
        return isinstance(S.links[p].sock, __import__("ssl").SSLSocket) and S.links[p].sock.version()
    assert remotecall_fetch(peer_link_is_tls, a, b).startswith("TLS")


class _OneWorker(ClusterManager):
    """Starts one worker with the given TLS flags (the test's rogue worker)."""

    def __init__(self, flags):
        self.flags = flags

    def launch(self, params, launched, notify):
        process = subprocess.Popen([sys.executable, "-m", "pydist.worker", "--bind-to", "127.0.0.1",
                                    *self.flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        process.stdin.write((cluster_cookie() + "\n").encode())
        process.stdin.close()
        with notify:
            launched.append(WorkerConfig(io=process.stdout, process=process, ident="rogue"))
            notify.notify_all()

    def manage(self, pid, config, op):
        pass


def test_tls_refuses_a_worker_with_a_certificate_from_another_ca(tls_off, tmp_path):
    pytest.importorskip("cryptography")
    good = _make_ca(tmp_path, "good")("master")
    rogue = _make_ca(tmp_path, "rogue")("worker")
    with pytest.raises(LaunchError) as info:
        addprocs(_OneWorker(rogue.argv()), tls=good)
    assert info.value.added == []
    assert "rogue" in str(info.value)
    assert workers() == [1]


# -- version skew ----------------------------------------------------------------------------
def _other_python():
    base = "/root/.pyenv/versions"
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for version in sorted(os.listdir(base)) if os.path.isdir(base) else ():
        exe = os.path.join(base, version, "bin", "python")
        if version.startswith("3.") and not version.startswith(mine + ".") and os.path.exists(exe):
            probe = subprocess.run([exe, "-c", "import cloudpickle, tqdm"], capture_output=True)
            if probe.returncode == 0:
                return exe, version
    return None


def test_worker_on_another_python_minor_version_is_refused_naming_both(no_workers):
    other = _other_python()
    if other is None:
        pytest.skip("no other Python 3 minor version with cloudpickle and tqdm installed")
    exe, version = other
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with pytest.raises(LaunchError) as info:
        addprocs(1, exename=exe, env={"PYTHONPATH": root})
    text = str(info.value)
    assert "version mismatch" in text
    assert f"Python {sys.version_info[0]}.{sys.version_info[1]}" in text
    assert "Python " + ".".join(version.split(".")[:2]) in text
