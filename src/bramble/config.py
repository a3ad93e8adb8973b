"""One typed settings object: defaults, then the TOML file, then the environment.

The all-in-one host needs no file at all. Environment variables override the file:
``BRAMBLE_STATE_DIR=/srv/bramble`` or, for nested sections, ``BRAMBLE_API__PORT=9000``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_CONFIG_FILE = Path("/etc/bramble/brambled.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8470, ge=1, le=65535)
    # Where the daemon writes the admin token it creates on first start.
    admin_token_file: Path | None = None


class ComputeSettings(_Section):
    driver: Literal["qemu", "fake"] = "qemu"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    kvm_probe_seconds: float = Field(default=3.0, gt=0)
    stop_timeout_seconds: float = Field(default=30.0, ge=0)
    vnc_first_display: int = Field(default=0, ge=0, le=10000)
    cpu_overcommit: float = Field(default=16.0, gt=0)
    memory_overcommit: float = Field(default=1.0, gt=0)


class StorageSettings(_Section):
    driver: Literal["local", "rbd", "fake"] = "local"
    # Download limit for server-side image imports from URLs.
    max_image_bytes: int = Field(default=200 * 1024**3, gt=0)
    # rbd driver: the cluster's conf (mon_host, ...), the pool, and who we are in it.
    # QEMU reads the same conf; the keyring, if given here, is added to a copy of it.
    ceph_conf: Path = Path("/etc/ceph/ceph.conf")
    ceph_pool: str = Field(default="bramble", pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    ceph_user: str = Field(default="bramble", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # without "client."
    ceph_keyring: Path | None = None  # default: the conf's keyring setting
    # An unreachable cluster fails an operation after this long instead of librados' 5 minutes.
    ceph_timeout_seconds: int = Field(default=15, ge=1, le=3600)
    # Node cache tier (rbd only): new VMs get a local overlay on a node-wide cache of their image
    # unless `vm create` says otherwise; cache_dir must be short (unix sockets live in it).
    cache: Literal["off", "on"] = "off"
    cache_dir: Path | None = None  # default: state_dir / "cache"
    precache_gib: float = Field(default=0.0, ge=0)  # read the first N GiB of the image when a VM starts


class AgentSettings(_Section):
    reconcile_interval_seconds: float = Field(default=10.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)


class NetworkSettings(_Section):
    """VM networks: which driver builds bridges and taps, and how long freed addresses rest."""

    # auto: the Linux bridge driver with the qemu compute driver, the in-memory fake with the fake one.
    driver: Literal["auto", "bridge", "fake"] = "auto"
    # An address freed by a deleted VM is not given to another NIC for this long (ARP caches, leases).
    quarantine_seconds: float = Field(default=600.0, ge=0)
    # Lease time the VM networks' DHCP servers hand out (the address itself never changes).
    dhcp_lease_seconds: int = Field(default=3600, ge=60)
    dhcp_port: int = Field(default=67, ge=0, le=65535)


class BootInterfaceSettings(_Section):
    """One provisioning interface: either we hand out addresses, or only the PXE answer."""

    name: str = Field(min_length=1, max_length=15)
    mode: Literal["authoritative", "proxy"] = "authoritative"
    # The address clients reach us on; defaults to the interface's first IPv4 address.
    server_ip: str | None = None
    # Authoritative mode only.
    subnet: str | None = None
    range_start: str | None = None
    range_end: str | None = None
    router: str | None = None
    dns: list[str] = []
    domain: str | None = None
    lease_seconds: int = Field(default=3600, ge=60)
    # Send IPv6 router advertisements so iPXE does not wait ~13 s for one.
    router_advertisements: bool = True
    # Hand NIC ROMs that are already iPXE our own iPXE loader first (ROMs too old for HTTP or
    # scripts). The loader's own DHCP request then gets the script, so the chain still ends.
    chainload_ipxe: bool = False


class BootSettings(_Section):
    """The `boot` role: DHCP/proxy-DHCP, TFTP, HTTP boot, syslog sink, Wake-on-LAN."""

    interfaces: list[BootInterfaceSettings] = []
    # Plain files, one per machine and per profile; may be a git repository.
    inventory_dir: Path | None = None  # default: state_dir / "inventory"
    # Boot loaders (undionly.kpxe, snponly.efi, ipxe.efi), kernels, initrds, images.
    files_dir: Path | None = None  # default: state_dir / "boot-files"
    tftp_port: int = Field(default=69, ge=0, le=65535)
    # In lock-step, how long a TFTP transfer polls for the next ACK before it sleeps (0: never).
    # Fast clients (VMs on this host) get their blocks sooner; slow ones switch it off.
    tftp_spin_us: float = Field(default=20.0, ge=0, le=1000)
    http_port: int = Field(default=8471, ge=0, le=65535)
    syslog_port: int = Field(default=514, ge=0, le=65535)
    dhcp_port: int = Field(default=67, ge=0, le=65535)
    # A released or expired address is not offered to another client for this long.
    quarantine_seconds: float = Field(default=600.0, ge=0)
    default_profile: str = "discovered"


class AuditSettings(_Section):
    """How long the audit log keeps events (days; 0 keeps them forever), and how the boot role's
    observations are held during a storm (see ``bramble.core.observations``). Boot traffic (DHCP,
    TFTP, HTTP boot, syslog) is by far the most plentiful, so it has its own, shorter age."""

    retention_days: float = Field(default=365.0, ge=0)
    boot_traffic_retention_days: float = Field(default=30.0, ge=0)
    prune_interval_seconds: float = Field(default=3600.0, ge=10)
    # About 1.3 KB of memory per held observation.
    storm_observations_per_second: float = Field(default=500.0, gt=0)
    storm_hold_rows: int = Field(default=20_000, ge=0)
    storm_hold_seconds: float = Field(default=10.0, ge=0)
    observations_max_queued: int = Field(default=50_000, ge=1000)
    # Boot traffic's audit records are written by a child process, off the DHCP packet path; false keeps
    # them in the daemon (one process, one core: for a host with a single CPU).
    writer_process: bool = True
    # The writer yields the CPU to the packet path (and everything else) when they compete: its records
    # can wait, a client waiting for an answer cannot. 0 runs it at the daemon's own priority.
    writer_niceness: int = Field(default=19, ge=0, le=19)

    @model_validator(mode="after")
    def _hold_fits_the_queue(self) -> AuditSettings:
        if self.storm_hold_rows > self.observations_max_queued:
            raise ValueError(
                f"storm_hold_rows ({self.storm_hold_rows}) is over observations_max_queued "
                f"({self.observations_max_queued}): the queue would drop rows before the hold ends"
            )
        return self


class Settings(BaseSettings):
    """Everything brambled reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="BRAMBLE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    state_dir: Path = Path("/var/lib/bramble")
    database_url: str | None = None  # default: SQLite in state_dir
    node_name: str | None = None  # default: the host name
    roles: list[Literal["api", "agent", "boot", "power"]] = ["api", "agent"]
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    api: ApiSettings = ApiSettings()
    compute: ComputeSettings = ComputeSettings()
    storage: StorageSettings = StorageSettings()
    agent: AgentSettings = AgentSettings()
    boot: BootSettings = BootSettings()
    network: NetworkSettings = NetworkSettings()
    audit: AuditSettings = AuditSettings()

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.absolute()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init kwargs carry the TOML file; the environment wins over the file.
        return (env_settings, init_settings)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.state_dir / 'bramble.db'}"

    @property
    def inventory_path(self) -> Path:
        return self.boot.inventory_dir or self.state_dir / "inventory"

    @property
    def boot_files_path(self) -> Path:
        return self.boot.files_dir or self.state_dir / "boot-files"

    @property
    def cache_path(self) -> Path:
        return self.storage.cache_dir or self.state_dir / "cache"

    @property
    def admin_token_path(self) -> Path:
        return self.api.admin_token_file or self.state_dir / "admin.token"


class ConfigError(Exception):
    """The configuration file or environment is wrong; the message names the key."""


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any), apply the environment, validate everything at once."""
    data: dict[str, Any] = {}
    source = path if path is not None else DEFAULT_CONFIG_FILE
    if path is not None and not path.exists():
        raise ConfigError(f"{path}: no such file")
    if source.exists():
        try:
            data = tomllib.loads(source.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{source}: {exc.strerror}") from None
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None
