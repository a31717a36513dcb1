"""Configuration: every error names its YAML path and line; env overrides are validated too."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from node.config import Config, ConfigError, DimseDestination, load, parse

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FILE = REPO / "config" / "fracnode.yaml"

VALID = """\
node:
  ae_title: SITE_NODE
  port: 11113
  calling_ae_titles: [CT01, ORTHANC]
peers:
  - {name: pacs, ae_title: ORTHANC, host: 10.0.0.5, port: 4242}
destinations:
  - {name: pacs, type: dimse, peer: pacs}
  - {name: back, type: sender}
  - {name: folder, type: folder, path: /tmp/results}
routes:
  - name: neck-ct
    match: {modality: [CT], body_part: 'NECK|C-?SPINE'}
    pipeline: cspine-fracture
    destinations: [pacs, back]
"""


def problems_of(
    text: str, environ: dict[str, str] | None = None
) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as caught:
        parse(textwrap.dedent(text), "site.yaml", {} if environ is None else environ)
    return [(p.path, p.line, p.message) for p in caught.value.problems]


def test_valid_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(VALID)
    config = load(path, environ={})
    assert config.node.ae_title == "SITE_NODE"
    assert config.node.port == 11113
    assert config.node.calling_ae_titles == ["CT01", "ORTHANC"]
    assert isinstance(config.destination("pacs"), DimseDestination)
    assert config.peer_by_ae_title("ORTHANC") == config.peer("pacs")
    assert config.routes[0].match.body_part == "NECK|C-?SPINE"


def test_default_file_equals_the_embedded_defaults() -> None:
    spelled, embedded = load(DEFAULT_FILE, environ={}), load(None, environ={})
    # the file also spells out each pipeline's settings, whose defaults the pipeline keeps
    # (tests/unit/test_pipeline_settings.py checks those against the pipelines)
    assert spelled.pipelines and not embedded.pipelines
    assert spelled.model_copy(update={"pipelines": {}}) == embedded


def test_embedded_defaults_equal_a_config_built_without_arguments() -> None:
    assert load(None, environ={}) == Config()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.yaml", environ={})


@pytest.mark.parametrize(
    ("text", "path", "line", "message"),
    [
        pytest.param(
            "node:\n  ae_title: A\n  colour: red\n",
            "node.colour",
            3,
            "unknown setting 'colour'",
            id="unknown-key",
        ),
        pytest.param("nodes: {}\n", "nodes", 1, "unknown setting 'nodes'", id="unknown-section"),
        pytest.param(
            "node:\n  port: abc\n", "node.port", 2, "valid integer", id="port-not-a-number"
        ),
        pytest.param(
            "node:\n  port: 70000\n",
            "node.port",
            2,
            "less than or equal to 65535",
            id="port-too-large",
        ),
        pytest.param(
            "assembly:\n  complete_on_release: maybe\n",
            "assembly.complete_on_release",
            2,
            "valid boolean",
            id="bool-wrong-type",
        ),
        pytest.param("logging:\n  level: LOUD\n", "logging.level", 2, "'DEBUG'", id="literal"),
        pytest.param(
            "node:\n  ae_title: ABCDEFGHIJKLMNOPQ\n",
            "node.ae_title",
            2,
            "not valid",
            id="ae-title-17-chars",
        ),
        pytest.param(
            "node:\n  ae_title: 'A\\B'\n",
            "node.ae_title",
            2,
            "no backslash",
            id="ae-title-backslash",
        ),
        pytest.param(
            "node:\n  ae_title: ''\n", "node.ae_title", 2, "not valid", id="ae-title-empty"
        ),
        pytest.param(
            "node:\n  ae_title: '   '\n", "node.ae_title", 2, "not valid", id="ae-title-blank"
        ),
        pytest.param(
            "node:\n  calling_ae_titles: [OK, 'B\\AD']\n",
            "node.calling_ae_titles",
            2,
            "no backslash",
            id="calling-ae-backslash",
        ),
        pytest.param(
            "peers:\n  - name: p\n    ae_title: P\n    host: h\n    port: 0\n",
            "peers[0].port",
            5,
            "greater than or equal to 1",
            id="peer-port-zero",
        ),
        pytest.param(
            "peers:\n  - name: p\n    ae_title: P\n    port: 104\n",
            "peers[0].host",
            2,
            "Field required",
            id="peer-missing-host",
        ),
        pytest.param(
            "destinations:\n  - name: x\n    type: ftp\n",
            "destinations[0]",
            2,
            "does not match any of the expected tags",
            id="unknown-destination-type",
        ),
        pytest.param(
            "destinations:\n  - name: x\n    path: /tmp\n",
            "destinations[0]",
            2,
            "Unable to extract tag",
            id="destination-without-type",
        ),
        pytest.param(
            "destinations:\n  - name: x\n    type: folder\n    path: /tmp\n    peer: y\n",
            "destinations[0].peer",
            5,
            "unknown setting 'peer'",
            id="destination-extra-key",
        ),
        pytest.param(
            "routes:\n  - name: r\n    pipeline: p\n    destinations: [results-folder, nowhere]\n",
            "routes[0].destinations[1]",
            4,
            "route 'r': unknown destination 'nowhere'",
            id="route-unknown-destination",
        ),
        pytest.param(
            "routes:\n  - name: r\n    pipeline: p\n    destinations: []\n",
            "routes[0].destinations",
            4,
            "at least 1 item",
            id="route-without-destination",
        ),
        pytest.param(
            "destinations:\n  - name: pacs\n    type: dimse\n    peer: orthanc\n",
            "destinations[0].peer",
            4,
            "destination 'pacs': unknown peer 'orthanc' (known: none)",
            id="destination-unknown-peer",
        ),
        pytest.param(
            "peers:\n  - {name: a, ae_title: A, host: h, port: 1}\n  - {name: a, ae_title: B, host: h, port: 2}\n",
            "peers[1].name",
            3,
            "peer names must be unique; 'a' is repeated",
            id="duplicate-peer",
        ),
        pytest.param(
            "destinations:\n  - {name: d, type: sender}\n  - {name: d, type: folder, path: /x}\n",
            "destinations[1].name",
            3,
            "destination names must be unique",
            id="duplicate-destination",
        ),
        pytest.param(
            "routes:\n"
            "  - {name: r, pipeline: p, destinations: [results-folder]}\n"
            "  - {name: r, pipeline: q, destinations: [results-folder]}\n",
            "routes[1].name",
            3,
            "route names must be unique; 'r' is repeated",
            id="duplicate-route",
        ),
        pytest.param(
            "routes:\n  - name: r\n    pipeline: p\n    destinations: [results-folder]\n"
            "    match:\n      modality: [CT]\n      series_description: '(bone'\n",
            "routes[0].match.series_description",
            7,
            "not a valid regular expression",
            id="bad-regex",
        ),
        pytest.param(
            "jobs:\n  retry: {initial_s: 10, max_s: 5}\n",
            "jobs.retry",
            2,
            "max_s (5.0) must be at least initial_s (10.0)",
            id="retry-max-below-initial",
        ),
    ],
)
def test_invalid_setting_names_its_yaml_path_and_line(
    text: str, path: str, line: int, message: str
) -> None:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0][:2] == (path, line)
    assert message in problems[0][2]


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("node:\n  aetitle: X\n", "did you mean 'ae_title'?"),
        ("assembly:\n  quiet_period: 3\n", "did you mean 'quiet_period_s'?"),
        ("jobs:\n  retry: {intial_s: 3}\n", "did you mean 'initial_s'?"),
        (
            "destinations:\n  - {name: d, type: dimse, peer: p, pear: p}\npeers: [{name: p, ae_title: P, host: h, port: 1}]\n",
            "did you mean 'peer'?",
        ),
        (
            "routes:\n  - {name: r, pipeline: p, destinations: [results-folder], match: {modalty: [CT]}}\n",
            "did you mean 'modality'?",
        ),
        ("node:\n  zzzz: 1\n", "settings here: ae_title, bind, calling_ae_titles"),
    ],
)
def test_unknown_setting_hint_suggests_the_closest_valid_key(text: str, hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, "site.yaml", {})
    (problem,) = caught.value.problems
    assert hint in problem.hint
    assert hint in str(caught.value)


def test_field_and_reference_errors_are_reported_together_in_file_order() -> None:
    problems = problems_of("""\
        node:
          port: abc
        destinations:
          - {name: pacs, type: dimse, peer: orthanc}
        routes:
          - name: r
            pipeline: p
            match: {body_part: '['}
            destinations: [nowhere]
        """)
    assert [(path, line) for path, line, _ in problems] == [
        ("node.port", 2),
        ("destinations[0].peer", 4),
        ("routes[0].match.body_part", 8),
        ("routes[0].destinations[0]", 9),
    ]


def test_invalid_yaml_syntax_names_the_line() -> None:
    problems = problems_of("node:\n  port: 11112\n  calling_ae_titles: [A, B\nstorage: {}\n")
    assert len(problems) == 1
    path, line, message = problems[0]
    assert path == "(file)" and line == 4 and "not valid YAML" in message


def test_top_level_that_is_not_a_mapping_is_an_error() -> None:
    assert problems_of("- node\n") == [("(top level)", 1, "must be a mapping")]


def test_error_message_lists_every_problem_with_source_and_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("node:\n  port: -1\n  ae_title: ''\n", "site.yaml", {})
    text = str(caught.value)
    assert text.startswith("configuration site.yaml: 2 problem(s)")
    assert "node.port (line 2)" in text and "node.ae_title (line 3)" in text


def test_config_built_in_code_still_checks_references() -> None:
    with pytest.raises(ValueError, match="route 'r': unknown destination 'nowhere'"):
        Config.model_validate(
            {"routes": [{"name": "r", "pipeline": "p", "destinations": ["nowhere"]}]}
        )


@pytest.mark.parametrize(
    ("environ", "section", "key", "value"),
    [
        ({"FRACNODE_PORT": "11200"}, "node", "port", 11200),
        ({"FRACNODE_AE_TITLE": "SITE01"}, "node", "ae_title", "SITE01"),
        ({"FRACNODE_AE_TITLE": "1234"}, "node", "ae_title", "1234"),  # not the integer 1234
        ({"FRACNODE_AE_TITLE": "NO"}, "node", "ae_title", "NO"),  # not YAML's false
        ({"FRACNODE_BIND": "127.0.0.1"}, "node", "bind", "127.0.0.1"),
        ({"FRACNODE_DATA_DIR": "/srv/2024"}, "storage", "data_dir", Path("/srv/2024")),
        ({"FRACNODE_DATA_DIR": "2024"}, "storage", "data_dir", Path("2024")),
        ({"FRACNODE_WORKERS": "4"}, "jobs", "workers", 4),
        ({"FRACNODE_LOG_LEVEL": "DEBUG"}, "logging", "level", "DEBUG"),
        ({"FRACNODE_ASSEMBLY__QUIET_PERIOD_S": "2"}, "assembly", "quiet_period_s", 2.0),
        (
            {"FRACNODE_ASSEMBLY__COMPLETE_ON_RELEASE": "true"},
            "assembly",
            "complete_on_release",
            True,
        ),
        (
            {"FRACNODE_NODE__CALLING_AE_TITLES": "[CT01, MR02]"},
            "node",
            "calling_ae_titles",
            ["CT01", "MR02"],
        ),
        (
            {"FRACNODE_CONFIG": "/etc/x.yaml", "HOME": "/root"},
            "node",
            "port",
            11112,
        ),  # not settings
    ],
)
def test_environment_overrides_apply(
    environ: dict[str, str], section: str, key: str, value: object
) -> None:
    config = load(None, environ=environ)
    assert getattr(getattr(config, section), key) == value


def test_environment_override_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(VALID)
    config = load(
        path, environ={"FRACNODE_PORT": "11200", "FRACNODE_ASSEMBLY__QUIET_PERIOD_S": "2"}
    )
    assert (config.node.port, config.assembly.quiet_period_s) == (11200, 2.0)
    assert config.node.ae_title == "SITE_NODE"


@pytest.mark.parametrize(
    ("environ", "path", "message"),
    [
        ({"FRACNODE_PORT": "abc"}, "node.port", "from FRACNODE_PORT"),
        ({"FRACNODE_PORT": "99999"}, "node.port", "from FRACNODE_PORT"),
        ({"FRACNODE_AE_TITLE": "WAY_TOO_LONG_AE_TITLE"}, "node.ae_title", "from FRACNODE_AE_TITLE"),
        (
            {"FRACNODE_ASSEMBLY__QUIET_PERIOD_S": "0"},
            "assembly.quiet_period_s",
            "from FRACNODE_ASSEMBLY__QUIET_PERIOD_S",
        ),
        (
            {"FRACNODE_ASSEMBLY__QUIET_PERIOD_SECONDS": "2"},
            "assembly.quiet_period_seconds",
            "unknown setting",
        ),
    ],
)
def test_environment_overrides_are_validated(
    environ: dict[str, str], path: str, message: str
) -> None:
    (problem,) = problems_of("", environ)
    assert problem[0] == path
    assert problem[1] is None  # the value has no line: it came from the environment
    assert message in problem[2]


def test_environment_override_error_in_a_file_does_not_point_at_the_files_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(VALID)
    with pytest.raises(ConfigError) as caught:
        load(path, environ={"FRACNODE_PORT": "abc"})
    (problem,) = caught.value.problems
    assert (problem.path, problem.line) == ("node.port", None)
    assert "FRACNODE_PORT" in problem.message


# -- DICOMweb peers and destinations, retrieve -----------------------------------------------------

DICOMWEB = """\
peers:
  - {name: pacs, ae_title: ORTHANC, host: 10.0.0.5, port: 4242}
  - {name: pacs-move, type: dimse, ae_title: PACS2, host: 10.0.0.6, port: 104, retrieve: c-move}
  - name: orthanc-web
    type: dicomweb
    url: https://orthanc.hospital.lan/dicom-web/
    auth: {type: basic, user: fracnode, password: s3cret}
    verify_tls: /etc/fracnode/ca.pem
    timeout_s: 20
    ae_title: ORTHANC-WEB
  - {name: cloud, type: dicomweb, url: 'http://cloud:8080/dicomweb', auth: {type: bearer, token_file: /run/secrets/t}}
destinations:
  - {name: pacs-web, type: dicomweb, peer: orthanc-web}
  - {name: pacs, type: dimse, peer: pacs}
routes:
  - {name: r, pipeline: p, destinations: [pacs-web, pacs]}
"""


def test_dicomweb_peers_and_destinations_load() -> None:
    from node.config import BasicAuth, BearerAuth, DicomwebDestination, DicomwebPeer, DimsePeer

    config = parse(DICOMWEB, "site.yaml", {})
    pacs, moving, web, cloud = config.peers
    assert isinstance(pacs, DimsePeer) and pacs.type == "dimse" and pacs.retrieve == "c-get"
    assert isinstance(moving, DimsePeer) and moving.retrieve == "c-move"
    assert isinstance(web, DicomwebPeer)
    assert web.url == "https://orthanc.hospital.lan/dicom-web"  # no trailing slash
    assert isinstance(web.auth, BasicAuth) and web.auth.secret() == "s3cret"
    assert web.verify_tls == Path("/etc/fracnode/ca.pem") and web.timeout_s == 20
    assert web.label == "ORTHANC-WEB" and cloud.label == "cloud"
    assert isinstance(cloud.auth, BearerAuth) and cloud.verify_tls is True
    assert isinstance(config.destination("pacs-web"), DicomwebDestination)
    assert config.peer_by_ae_title("ORTHANC-WEB") is web


def test_a_peer_without_type_is_a_dimse_peer_as_before() -> None:
    config = parse(VALID, "site.yaml", {})
    assert config.peers[0].type == "dimse"
    # and what a dump of it says loads back the same (tests and tools write configs this way)
    assert Config.model_validate(config.model_dump(mode="json")) == config


def test_secret_files_are_read_when_used(tmp_path: Path) -> None:
    token = tmp_path / "token"
    config = parse(
        f"peers:\n  - {{name: w, type: dicomweb, url: 'http://h', auth: {{type: bearer, token_file: {token}}}}}\n",
        "site.yaml", {},
    )
    token.write_text("abc\n")
    assert config.peers[0].auth.secret() == "abc"  # type: ignore[union-attr]
    token.unlink()
    with pytest.raises(ValueError, match="cannot read the token file"):
        config.peers[0].auth.secret()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "path", "message", "hint"),
    [
        pytest.param(
            "peers:\n  - {name: w, type: dicomweb, url: 'http://h'}\n"
            "destinations:\n  - {name: d, type: dimse, peer: w}\n",
            "destinations[0].peer",
            "destination 'd' (type dimse) names peer 'w', which is a DICOMweb peer; use 'type: dicomweb'",
            "",
            id="dimse-destination-to-dicomweb-peer",
        ),
        pytest.param(
            "peers:\n  - {name: p, ae_title: P, host: h, port: 1}\n"
            "destinations:\n  - {name: d, type: dicomweb, peer: p}\n",
            "destinations[0].peer",
            "destination 'd' (type dicomweb) names peer 'p', which is a DIMSE peer; use 'type: dimse'",
            "",
            id="dicomweb-destination-to-dimse-peer",
        ),
        pytest.param(
            "destinations:\n  - {name: d, type: dicomweb, peer: nowhere}\n",
            "destinations[0].peer",
            "destination 'd': unknown peer 'nowhere' (known: none)",
            "",
            id="dicomweb-destination-unknown-peer",
        ),
        pytest.param(
            "peers:\n  - {name: w, type: dicomwbe, url: 'http://h'}\n",
            "peers[0]",
            "a peer's type is dimse (the default when absent) or dicomweb",
            "DICOMweb peers a url",
            id="unknown-peer-type",
        ),
        pytest.param(
            "peers:\n  - {name: w, type: dicomweb, url: 'orthanc:8042'}\n",
            "peers[0].url",
            "must start with http:// or https://",
            "",
            id="url-without-scheme",
        ),
        pytest.param(
            "peers:\n  - {name: w, type: dicomweb}\n",
            "peers[0].url",
            "Field required",
            "required",
            id="dicomweb-peer-without-url",
        ),
        pytest.param(
            "peers:\n  - {name: w, type: dicomweb, url: 'http://h', retrieve: c-get}\n",
            "peers[0].retrieve",
            "unknown setting 'retrieve'",
            "settings here:",
            id="retrieve-on-a-dicomweb-peer",
        ),
        pytest.param(
            "peers:\n  - {name: p, ae_title: P, host: h, port: 1, retrieve: c-find}\n",
            "peers[0].retrieve",
            "'c-get' or 'c-move'",
            "listed values",
            id="retrieve-unknown",
        ),
        pytest.param(
            "peers:\n  - {name: w, type: dicomweb, url: 'http://h', auth: {type: basic, user: u}}\n",
            "peers[0].auth",
            "give either password or password_file",
            "",
            id="basic-auth-without-password",
        ),
        pytest.param(
            "peers:\n  - {name: w, type: dicomweb, url: 'http://h', auth: {type: kerberos}}\n",
            "peers[0].auth",
            "does not match any of the expected tags",
            "none, basic, bearer",
            id="auth-type-unknown",
        ),
        pytest.param(
            "peers:\n  - {name: w, type: dicomweb, url: 'http://h', auth: {type: bearer, tokn: x}}\n",
            "peers[0].auth.tokn",
            "unknown setting 'tokn'",
            "did you mean 'token'?",
            id="auth-misspelt-key",
        ),
        pytest.param(
            "peers:\n  - {name: w, type: dicomweb, url: 'http://h', verfy_tls: false}\n",
            "peers[0].verfy_tls",
            "unknown setting 'verfy_tls'",
            "did you mean 'verify_tls'?",
            id="verify-tls-misspelt",
        ),
        pytest.param(
            "peers:\n  - {name: w, type: dicomweb, url: 'http://h', ae_title: 'A\\\\B'}\n",
            "peers[0].ae_title",
            "no backslash",
            "",
            id="dicomweb-ae-title",
        ),
    ],
)
def test_dicomweb_configuration_errors_say_what_to_fix(text: str, path: str, message: str, hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, "site.yaml", {})
    (problem,) = caught.value.problems
    assert problem.path == path and problem.line is not None
    assert message in problem.message
    assert hint in problem.hint
