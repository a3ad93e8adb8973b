"""brambled: one daemon per node; its roles (api, agent, ...) come from the config.

The all-in-one default runs the API and the agent in one asyncio process with
SQLite and local storage in the state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from bramble import __version__
from bramble.agent.agent import Agent
from bramble.agent.cache import NodeCache
from bramble.agent.metadata import MetadataService
from bramble.agent.network import NodeNetworks
from bramble.api.app import create_app
from bramble.audit.retention import AuditPruner, RetentionPolicy
from bramble.auditd import AuditWriterError, AuditWriterProcess, WriterConfig, as_observation, can_run_apart
from bramble.boot.inventory import Inventory
from bramble.compute.driver import ComputeDriver
from bramble.config import ConfigError, Settings, load_settings
from bramble.core.cloud import Cloud
from bramble.core.deps import CoreDeps
from bramble.core.gateway import NodeGateway
from bramble.core.observations import ObservationLog
from bramble.core.operations import OperationRunner
from bramble.core.pools import default_pool_spec
from bramble.db.migrate import upgrade
from bramble.db.session import Database
from bramble.storage.cache import CacheError, ImageCache
from bramble.storage.driver import StorageDriver, StorageError
from bramble.storage.registry import StorageRegistry

if TYPE_CHECKING:
    from bramble.boot.role import BootObservation, BootRole

log = logging.getLogger("brambled")


class LocalNodes:
    """The node directory of a single-host cloud: every VM lives on this node."""

    def __init__(self) -> None:
        self.agents: dict[str, NodeGateway] = {}

    def gateway(self, node: str) -> NodeGateway:
        try:
            return self.agents[node]
        except KeyError:
            raise LookupError(node) from None


def make_compute(settings: Settings, accel: str) -> ComputeDriver:
    if settings.compute.driver == "fake":
        from bramble.compute.fake import FakeComputeDriver

        return FakeComputeDriver()
    from bramble.compute.qemu.driver import QemuDriver

    return QemuDriver(settings.state_dir / "run", accel=accel, stop_timeout=settings.compute.stop_timeout_seconds)


def make_networks(settings: Settings) -> NodeNetworks:
    """Linux bridges with QEMU; in memory (and no DHCP sockets) with the fake compute driver."""
    driver = settings.network.driver
    if driver == "auto":
        driver = "fake" if settings.compute.driver == "fake" else "bridge"
    net = settings.network
    if driver == "fake":
        from bramble.network.fake import FakeNetworkDriver

        return NodeNetworks(FakeNetworkDriver(), serve_dhcp=False)
    from bramble.network.bridge import BridgeDriver

    return NodeNetworks(BridgeDriver(), dhcp_port=net.dhcp_port, lease_seconds=net.dhcp_lease_seconds)


def make_storage(settings: Settings) -> StorageDriver:
    if settings.storage.driver == "fake":
        from bramble.storage.fake import FakeStorage

        return FakeStorage()
    if settings.storage.driver == "rbd":
        from bramble.storage.rbd import RbdStorageDriver

        ceph = settings.storage
        return RbdStorageDriver(
            conf=ceph.ceph_conf,
            pool=ceph.ceph_pool,
            user=ceph.ceph_user,
            keyring=ceph.ceph_keyring,
            work_dir=settings.state_dir / "rbd",
            op_timeout=ceph.ceph_timeout_seconds,
            connect_timeout=ceph.ceph_timeout_seconds,
        )
    from bramble.storage.local import LocalStorage

    return LocalStorage(settings.state_dir)


def choose_accel(settings: Settings) -> tuple[str, str]:
    if settings.compute.driver == "fake":
        return "tcg", "fake compute driver"
    if settings.compute.accel != "auto":
        return settings.compute.accel, "set in the configuration"
    from bramble.compute.qemu.accel import probe_kvm

    return probe_kvm(settings.compute.kvm_probe_seconds)


@dataclass
class Services:
    settings: Settings
    db: Database
    cloud: Cloud
    agent: Agent | None
    admin_token: str | None
    boot: BootRole | None = None
    observations: ObservationLog | AuditWriterProcess | None = None
    storage_pools: StorageRegistry | None = None
    pruner: AuditPruner | None = None

    async def close(self) -> None:
        if self.pruner is not None:
            await self.pruner.close()
        if self.boot is not None:
            await self.boot.close()
        if self.observations is not None:
            await self.observations.close()
        if self.agent is not None:
            await self.agent.stop()
        await self.cloud.deps.runner.drain(timeout=5)
        if self.storage_pools is not None:
            await self.storage_pools.close()
        await self.db.dispose()


async def ensure_admin_token(cloud: Cloud, path: Path) -> str | None:
    """Create an admin token on first start and keep it where make up and the CLI find it."""
    if path.exists():
        return path.read_text().strip()
    # The file was lost but the database survived: mint another admin token.
    name = "admin" if not await cloud.tokens.has("admin") else f"admin-{secrets.token_hex(4)}"
    token = await cloud.tokens.create(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(token + "\n")
    os.replace(temp, path)
    return token


async def build_services(settings: Settings, compute: ComputeDriver | None = None) -> Services:
    """Everything brambled runs, wired together (tests use this too, with their own driver)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    try:  # first: a storage backend that cannot work here is a configuration error, nothing to undo
        storage = make_storage(settings)
    except StorageError as exc:
        raise ConfigError(f"[storage] driver {settings.storage.driver!r}: {exc}") from None
    db = Database.connect(settings.effective_database_url)
    await upgrade(db)
    nodes = LocalNodes()
    # one driver per storage pool; the default pool's is the one built from [storage]
    pools = StorageRegistry(settings.state_dir)
    pools.adopt(default_pool_spec(settings), storage)
    runner = OperationRunner(db)
    inventory = Inventory(settings.inventory_path, settings.boot.default_profile)
    cloud = Cloud(
        CoreDeps(
            db=db,
            runner=runner,
            settings=settings,
            nodes=nodes,
            image_store=storage,
            inventory=inventory,
            storage_pools=pools,
        )
    )
    await cloud.pools.ensure_default()
    await cloud.recover()
    token = await ensure_admin_token(cloud, settings.admin_token_path) if "api" in settings.roles else None
    agent = None
    if "agent" in settings.roles:
        accel, reason = await asyncio.to_thread(choose_accel, settings)
        node = settings.node_name or socket.gethostname()
        networks = make_networks(settings)
        node_compute = compute or make_compute(settings, accel)
        agent = Agent(
            node,
            node_compute,
            storage,
            cloud.nodes,
            accel=accel,
            accel_reason=reason,
            roles=tuple(settings.roles),
            stop_timeout=settings.compute.stop_timeout_seconds,
            reconcile_interval=settings.agent.reconcile_interval_seconds,
            heartbeat_interval=settings.agent.heartbeat_seconds,
            networks=networks,
            seed_dir=settings.state_dir / "seeds",
            # real bridges only: the fake network driver has no DNAT to bring guests to a listener
            metadata=MetadataService() if networks.serve_dhcp else None,
            pools=pools,
            cache=make_cache(settings, node_compute),
        )
        nodes.agents[node] = agent
        await agent.start()
        log.info("agent %s up: %s (%s)", node, accel, reason)
    boot = observations = None
    if "boot" in settings.roles:
        boot, observations = await start_boot_role(settings, db, inventory)
        cloud.deps.boot = boot
    # Every node prunes: a lone node must, and on PostgreSQL a row one node deleted is not found by another.
    pruner = AuditPruner(
        db,
        RetentionPolicy(settings.audit.retention_days, settings.audit.boot_traffic_retention_days),
        interval=settings.audit.prune_interval_seconds,
    )
    pruner.start()
    return Services(settings, db, cloud, agent, token, boot, observations, pools, pruner)


def make_cache(settings: Settings, compute: ComputeDriver) -> NodeCache | None:
    """The node cache tier in front of RBD images, for QEMU nodes; None (and a warning) if
    ``cache_dir`` cannot hold its unix sockets, so a VM asking for the cache gets a clear error."""
    if compute.name != "qemu":
        return None
    try:
        return NodeCache(ImageCache(settings.cache_path), compute)
    except (CacheError, OSError) as exc:
        log.warning("no cache tier on this node: %s", exc)
        return None


def observation_log(settings: Settings, db: Database) -> ObservationLog:
    """The batched audit writer for high-volume observations, with the storm hold from ``[audit]``."""
    audit = settings.audit
    return ObservationLog(
        db,
        max_queued=audit.observations_max_queued,
        storm_rate=audit.storm_observations_per_second,
        storm_backlog=audit.storm_hold_rows,
        storm_delay_seconds=audit.storm_hold_seconds,
    )


async def start_boot_role(
    settings: Settings, db: Database, inventory: Inventory
) -> tuple[BootRole, ObservationLog | AuditWriterProcess]:
    """DHCP, TFTP, HTTP boot, syslog and WoL; every interaction goes to the audit log in batches.

    By default (``[audit] writer_process``) the audit records are paired, formatted and written by a
    child process (``bramble.auditd``), so the DHCP packet path keeps the daemon's core to itself.
    """
    from bramble.boot.role import BootRole  # only daemons with the boot role load the boot servers

    actor = f"boot:{settings.node_name or socket.gethostname()}"
    if settings.audit.writer_process and can_run_apart(settings.effective_database_url):
        writer = AuditWriterProcess(WriterConfig.from_settings(settings, actor))
        try:
            await writer.start()
        except AuditWriterError as exc:
            raise ConfigError(f"[audit] writer_process: {exc}") from None
        role = BootRole(settings, inventory, writer.observe, dhcp_packets=writer.dhcp_packet)
        try:
            await role.start()
        except BaseException:
            await writer.close()
            raise
        return role, writer

    observations = observation_log(settings, db)
    observations.start()

    def observe(seen: BootObservation) -> None:
        observations.observe(as_observation(actor, seen))

    role = BootRole(settings, inventory, observe)
    try:
        await role.start()
    except BaseException:
        await observations.close()
        raise
    return role, observations


async def serve(settings: Settings) -> None:
    services = await build_services(settings)
    pidfile = settings.state_dir / "brambled.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    server = None
    try:
        if "api" in settings.roles:
            config = uvicorn.Config(
                create_app(services.cloud),
                host=settings.api.host,
                port=settings.api.port,
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
            server = uvicorn.Server(config)
            # brambled owns SIGTERM/SIGINT so it can stop the agent after the server.
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        # Everything built so far (modules, app, drivers: ~150k objects) lives as long as the daemon. Left
        # to the collector, each full collection walks all of it again, which at thousands of DHCP packets
        # a second cost ~9 us per exchange; frozen, collections look only at what came after start-up.
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if server is not None:
            log.info("brambled %s serving on http://%s:%d", __version__, settings.api.host, settings.api.port)
        else:
            log.info("brambled %s running roles %s (no API on this node)", __version__, ", ".join(settings.roles))
        if server is not None:
            serving = asyncio.create_task(server.serve())
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({serving, waiter}, return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            await serving
            if serving in done and serving.exception() is None and not stop.is_set() and not server.started:
                raise SystemExit(f"brambled: cannot listen on {settings.api.host}:{settings.api.port}")
            waiter.cancel()
        else:
            await stop.wait()
    finally:
        await services.close()
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="brambled", description="The Bramble node daemon.")
    parser.add_argument("--config", type=Path, help="TOML configuration file (default /etc/bramble/brambled.toml)")
    parser.add_argument("--state-dir", type=Path, help="override state_dir")
    parser.add_argument("--version", action="version", version=__version__)
    args = parser.parse_args(argv)
    overrides = {"state_dir": args.state_dir} if args.state_dir else {}
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        print(f"brambled: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings))
    except ConfigError as exc:  # found while starting (e.g. a storage backend this host cannot run)
        print(f"brambled: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
