"""Machines and boot profiles through the real API: files written, events recorded, 4xx on bad input."""

from __future__ import annotations

import tomllib

import httpx
import pytest

from bramble.daemon import Services

pytestmark = pytest.mark.anyio

WEB1 = {"name": "web1", "mac": "52-54-00-12-34-56", "ip": "10.0.0.5", "groups": ["rack1"], "wake_at": ["07:30"]}


async def add_profile(api: httpx.AsyncClient, name: str = "deb") -> dict:
    body = {"name": name, "kind": "kernel", "kernel": "debian/vmlinuz", "initrd": ["debian/initrd.gz"]}
    response = await api.post("/v1/profiles", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def test_machine_crud_writes_files_and_events(api: httpx.AsyncClient, services: Services) -> None:
    await add_profile(api)
    created = await api.post("/v1/machines", json={**WEB1, "profile": "deb", "reason": "new rack"})
    assert created.status_code == 201, created.text
    machine = created.json()
    assert machine["mac"] == "52:54:00:12:34:56"
    assert machine["profile"] == "deb" and machine["boot_profile"] == "deb"
    assert machine["path"] == "machines/web1.toml"
    path = services.settings.inventory_path / "machines/web1.toml"
    assert tomllib.loads(path.read_text())["ip"] == "10.0.0.5"

    listed = (await api.get("/v1/machines")).json()
    assert [m["name"] for m in listed["items"]] == ["web1"] and listed["problems"] == []

    patched = await api.patch("/v1/machines/web1", json={"profile": None, "notes": "rebuilt"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["profile"] is None and patched.json()["boot_profile"] == "discovered"
    assert patched.json()["notes"] == "rebuilt" and patched.json()["ip"] == "10.0.0.5"

    removed = await api.delete("/v1/machines/web1", params={"reason": "decommissioned"})
    assert removed.status_code == 200, removed.text
    assert removed.json()["target"] == "machine/web1"
    assert not path.exists()
    assert (await api.get("/v1/machines/web1")).status_code == 404

    events = (await api.get("/v1/events", params={"target": "machine/web1"})).json()
    actions = [(e["action"], e["outcome"]) for e in events]
    assert ("machine.create", "ok") in actions and ("machine.update", "ok") in actions
    assert ("machine.delete", "ok") in actions
    create = next(e for e in events if e["action"] == "machine.create")
    assert create["actor"] == "token:admin" and create["request_id"].startswith("req-")
    assert create["after"]["mac"] == "52:54:00:12:34:56" and create["after"]["path"] == "machines/web1.toml"


async def test_set_profile_is_its_own_action_and_adopts_a_discovered_machine(
    api: httpx.AsyncClient, services: Services
) -> None:
    inventory = services.cloud.deps.inventory
    assert inventory is not None
    found = inventory.discover("52:54:00:aa:bb:cc", "x86_64")  # type: ignore[attr-defined]
    assert (await api.get(f"/v1/machines/{found.name}")).json()["discovered"] is True
    await add_profile(api)
    response = await api.patch(f"/v1/machines/{found.name}", json={"profile": "deb"})
    assert response.status_code == 200, response.text
    assert response.json()["discovered"] is False
    events = (await api.get("/v1/events", params={"target": f"machine/{found.name}"})).json()
    assert events[-1]["action"] == "machine.set_profile"
    assert events[-1]["before"]["profile"] is None and events[-1]["after"]["profile"] == "deb"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"name": "x", "mac": "zz"}, 422, "invalid MAC address"),
        ({"name": "x", "mac": "52:54:00:00:00:09", "ip": "10.0.0.300"}, 422, "invalid IPv4"),
        ({"name": "x", "mac": "52:54:00:00:00:09", "profile": "nope"}, 422, "profile 'nope' does not exist"),
        ({"name": "x", "mac": "52:54:00:00:00:09", "wake_at": ["tea time"]}, 422, "invalid wake time"),
        ({"name": "x", "mac": "52:54:00:00:00:09", "arch": "vax"}, 422, "unknown architecture"),
        ({"name": "bad name", "mac": "52:54:00:00:00:09"}, 422, "name"),
        ({"name": "x", "mac": "52:54:00:00:00:09", "colour": "red"}, 422, "unknown field"),
        ({"name": "web1", "mac": "52:54:00:00:00:09"}, 409, "already exists"),
        ({"name": "x", "mac": "52:54:00:12:34:56"}, 409, "already belongs to machine 'web1'"),
        ({"name": "x", "mac": "52:54:00:00:00:09", "ip": "10.0.0.5"}, 409, "already given to machine 'web1'"),
    ],
)
async def test_bad_machine_input_is_a_4xx_and_a_rejected_event(
    api: httpx.AsyncClient, services: Services, body: dict, status: int, fragment: str
) -> None:
    assert (await api.post("/v1/machines", json=WEB1)).status_code == 201
    response = await api.post("/v1/machines", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]
    assert not (services.settings.inventory_path / "machines/x.toml").exists()
    if status == 409 or "does not exist" in fragment:
        events = (await api.get("/v1/events", params={"target": f"machine/{body['name']}"})).json()
        assert events[-1]["outcome"] == "rejected"


async def test_patch_and_delete_errors(api: httpx.AsyncClient) -> None:
    assert (await api.patch("/v1/machines/ghost", json={"notes": "x"})).status_code == 404
    assert (await api.delete("/v1/machines/ghost")).status_code == 404
    assert (await api.post("/v1/machines", json=WEB1)).status_code == 201
    response = await api.patch("/v1/machines/web1", json={})
    assert response.status_code == 422 and "nothing to change" in response.json()["error"]["message"]
    response = await api.patch("/v1/machines/web1", json={"mac": None})
    assert response.status_code == 422 and "mac cannot be null" in response.json()["error"]["message"]


async def test_list_reports_corrupt_files_with_path_and_line(api: httpx.AsyncClient, services: Services) -> None:
    machines = services.settings.inventory_path / "machines"
    machines.mkdir(parents=True)
    (machines / "broken.toml").write_text('mac = "52:54:00:00:00:01"\nip = [oops\n')
    (machines / "fine.toml").write_text('mac = "52:54:00:00:00:02"\n')
    listed = (await api.get("/v1/machines")).json()
    assert [m["name"] for m in listed["items"]] == ["fine"]
    [problem] = listed["problems"]
    assert problem["path"] == str(machines / "broken.toml") and problem["line"] == 2
    # A corrupt file can still be removed through the API.
    assert (await api.delete("/v1/machines/broken")).status_code == 200
    assert not (machines / "broken.toml").exists()


async def test_wake_without_the_boot_role_is_409(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/machines", json=WEB1)).status_code == 201
    response = await api.post("/v1/machines/web1/wake")
    assert response.status_code == 409
    assert "boot role is not enabled" in response.json()["error"]["message"]


async def test_wake_goes_through_the_boot_gateway(api: httpx.AsyncClient, services: Services) -> None:
    sent: list[tuple[str, str | None]] = []

    class Boot:
        async def wake(self, mac: str, interface: str | None) -> str:
            sent.append((mac, interface))
            return interface or "br-prov"

    services.cloud.deps.boot = Boot()
    assert (await api.post("/v1/machines", json={**WEB1, "interface": "eno2"})).status_code == 201
    response = await api.post("/v1/machines/web1/wake")
    assert response.status_code == 200, response.text
    assert response.json() == {"machine": "web1", "mac": "52:54:00:12:34:56", "interface": "eno2"}
    assert sent == [("52:54:00:12:34:56", "eno2")]
    events = (await api.get("/v1/events", params={"target": "machine/web1", "action": "machine.wake"})).json()
    assert events[-1]["after"] == {"mac": "52:54:00:12:34:56", "interface": "eno2"}


async def test_profiles_crud(api: httpx.AsyncClient, services: Services) -> None:
    listed = (await api.get("/v1/profiles")).json()
    assert {p["name"]: p["builtin"] for p in listed["items"]} == {"discovered": True, "local": True}
    assert next(p for p in listed["items"] if p["name"] == "discovered")["default"] is True

    created = await add_profile(api)
    assert created["path"] == "profiles/deb.toml" and created["kind"] == "kernel"
    again = await api.post("/v1/profiles", json={"name": "deb", "kind": "local"})
    assert again.status_code == 409
    replaced = await api.put("/v1/profiles/deb", json={"name": "deb", "kind": "ipxe", "template": "#!ipxe\nexit\n"})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["kind"] == "ipxe"
    bad = await api.put("/v1/profiles/deb", json={"name": "deb", "kind": "ipxe", "template": "{% if %}"})
    assert bad.status_code == 422 and "template line 1" in bad.json()["error"]["message"]
    assert (await api.post("/v1/profiles", json={"name": "k", "kind": "kernel"})).status_code == 422

    assert (await api.post("/v1/machines", json={**WEB1, "profile": "deb"})).status_code == 201
    assert (await api.get("/v1/profiles/deb")).json()["used_by"] == ["web1"]
    in_use = await api.delete("/v1/profiles/deb")
    assert in_use.status_code == 409 and "used by 1 machine" in in_use.json()["error"]["message"]
    assert (await api.delete("/v1/profiles/local")).status_code == 409
    assert (await api.patch("/v1/machines/web1", json={"profile": "local"})).status_code == 200
    assert (await api.delete("/v1/profiles/deb")).status_code == 200
    assert (await api.get("/v1/profiles/deb")).status_code == 404
    events = (await api.get("/v1/events", params={"target": "profile/deb"})).json()
    assert [e["action"] for e in events if e["outcome"] == "ok"] == [
        "profile.create",
        "profile.update",
        "profile.delete",
    ]


async def test_hand_edits_show_up_in_the_api(api: httpx.AsyncClient, services: Services) -> None:
    assert (await api.post("/v1/machines", json=WEB1)).status_code == 201
    path = services.settings.inventory_path / "machines/web1.toml"
    path.write_text(path.read_text().replace('ip = "10.0.0.5"', 'ip = "10.0.0.66"'))
    services.cloud.deps.inventory.refresh(wait=True)  # type: ignore[union-attr]  # skip the 1 s reload wait
    assert (await api.get("/v1/machines/web1")).json()["ip"] == "10.0.0.66"
