import pytest

from serving.settings import ServingSettings


def test_defaults_and_environment_overrides():
    assert ServingSettings.from_env({}) == ServingSettings()
    s = ServingSettings.from_env({"CAPSNET_WORKERS": "2", "CAPSNET_GRPC_PORT": "9001", "CAPSNET_REQUIRE_GPU": "yes",
                                  "CAPSNET_MAX_BATCH_SIZE": "8", "CAPSNET_MODEL_TAG": "capsnet-mnist:abc"})
    assert (s.workers, s.grpc_port, s.require_gpu, s.max_batch_size) == (2, 9001, True, 8)
    assert s.model_tags == ("capsnet-mnist:abc",)
    assert ServingSettings.from_env({"CAPSNET_MODEL_TAG": "a:1, b"}).model_tags == ("a:1", "b")
    assert (s.version_policy, s.model_control) == ("best", "none")
    s = ServingSettings.from_env({"CAPSNET_VERSION_POLICY": "latest:2; capsnet-mnist=specific:abc",
                                  "CAPSNET_MODEL_CONTROL": "Explicit", "CAPSNET_CONTROL_KEY": " s3cret "})
    assert (s.version_policy, s.model_control, s.control_key) == ("latest:2; capsnet-mnist=specific:abc", "explicit",
                                                                  "s3cret")
    assert "s3cret" not in repr(s)  # settings may be printed; the key never is
    s = ServingSettings.from_env({"CAPSNET_MAX_QUEUE": "3", "CAPSNET_RETRY_AFTER_S": "5", "CAPSNET_ACCESS_LOG": "1"})
    assert (s.max_queue, s.retry_after_s, s.access_log) == (3, 5, True)
    assert not ServingSettings().access_log
    assert not ServingSettings.from_env({"CAPSNET_REQUIRE_GPU": "off", "CAPSNET_ACCESS_LOG": ""}).require_gpu


@pytest.mark.parametrize("env, message", [({"CAPSNET_WORKERS": "0"}, "CAPSNET_WORKERS"),
                                          ({"CAPSNET_MAX_BATCH_SIZE": "1"}, "CAPSNET_MAX_BATCH_SIZE"),
                                          ({"CAPSNET_MAX_QUEUE": "0"}, "CAPSNET_MAX_QUEUE"),
                                          ({"CAPSNET_RETRY_AFTER_S": "0"}, "CAPSNET_RETRY_AFTER_S"),
                                          ({"CAPSNET_VERSION_POLICY": "newest"}, "unknown version policy 'newest'"),
                                          ({"CAPSNET_VERSION_POLICY": "m=latest:0"}, "N >= 1"),
                                          ({"CAPSNET_MODEL_CONTROL": "poll"}, "none or explicit"),
                                          ({"CAPSNET_MAX_QUEUE_DELAY_MS": "-1"}, "CAPSNET_MAX_QUEUE_DELAY_MS"),
                                          ({"CAPSNET_MAX_QUEUE_DELAY_MS": "1000"}, "below CAPSNET_MAX_LATENCY_MS"),
                                          ({"CAPSNET_MODEL_CONTROL": "explicit", "CAPSNET_WORKERS": "2",
                                            "CAPSNET_CONTROL_KEY": "k"}, "CAPSNET_WORKERS=1"),
                                          ({"CAPSNET_MODEL_CONTROL": "explicit"}, "needs CAPSNET_CONTROL_KEY"),
                                          ({"CAPSNET_MAX_BATCH_SIZE": "abc"},
                                           "CAPSNET_MAX_BATCH_SIZE must be a whole number, not 'abc'"),
                                          ({"CAPSNET_MAX_QUEUE_DELAY_MS": "2ms"},
                                           "CAPSNET_MAX_QUEUE_DELAY_MS must be a number"),
                                          ({"CAPSNET_GRPC_PORT": "70000"}, "CAPSNET_GRPC_PORT must be a port number"),
                                          ({"CAPSNET_OIP_HTTP_PORT": "0"}, "CAPSNET_OIP_HTTP_PORT must be a port"),
                                          ({"CAPSNET_GRPC_PORT": "9000", "CAPSNET_OIP_HTTP_PORT": "9000"},
                                           "both 9000: each protocol needs its own port"),
                                          ({"CAPSNET_MAX_REQUEST_BYTES": "-1"}, "CAPSNET_MAX_REQUEST_BYTES must be"),
                                          ({"CAPSNET_MAX_LATENCY_MS": "0"}, "CAPSNET_MAX_LATENCY_MS must be"),
                                          ({"CAPSNET_REQUIRE_GPU": "ture"}, "CAPSNET_REQUIRE_GPU must be true or"),
                                          ({"CAPSNET_ACCESS_LOG": "2"}, "CAPSNET_ACCESS_LOG must be true or false")])
def test_rejects_unusable_values(env, message):
    with pytest.raises(ValueError, match=message):
        ServingSettings.from_env(env)


def test_an_unusable_setting_ends_the_server_with_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("CAPSNET_MAX_BATCH_SIZE", "abc")
    with pytest.raises(SystemExit) as ended:
        ServingSettings.from_env_or_exit()
    assert ended.value.code == 2
    assert capsys.readouterr().err.strip() == \
        "cannot start the server: CAPSNET_MAX_BATCH_SIZE must be a whole number, not 'abc'"
