"""The gateway's wire behaviour seen from grpcio: raw protobuf bytes, health, reflection."""
import grpc
from riva.client.proto import health_pb2, health_pb2_grpc

METHOD = "/voice_workflow.VoiceGateway/StreamAudio"


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num, wire, payload):
    key = _varint(num << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def config_msg(rate=16000):
    cfg = _field(1, 2, b"en-US") + _field(2, 2, b"py") + _field(3, 0, _varint(rate))
    return _field(1, 2, cfg)


def text_msg(t):
    return _field(3, 2, t.encode())


def call(gateway, messages):
    with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as ch:
        rpc = ch.stream_stream(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return list(rpc(iter(messages), timeout=20))


def test_malformed_message_is_invalid_argument(gateway):
    try:
        call(gateway, [config_msg(), b"\xff\xff\xff\xff"])
        raise AssertionError("expected INVALID_ARGUMENT")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert "malformed" in e.details()


def test_seed_style_text_turn_over_raw_protobuf(gateway):
    out = call(gateway, [config_msg(), text_msg("hello from python")])
    # ServerMessage field 4 = event; the first is LISTENING "Ready"; the last END_OF_TURN (5).
    assert out[0].startswith(b"\x22") and b"Ready" in out[0]
    assert out[-1] == _field(4, 2, _field(1, 0, _varint(5)))
    llm = b"".join(m[2:] for m in out if m[:1] == b"\x12")  # field 2, short chunks
    assert b"You said: hello from python." in llm
    assert any(m[:1] == b"\x1a" for m in out), "audio chunks (field 3)"


def test_health_services(gateway):
    with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ["", "voice_workflow.VoiceGateway"]:
            r = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert r.status == health_pb2.HealthCheckResponse.SERVING, service


REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def test_reflection_lists_services_and_serves_the_descriptor(gateway):
    """What grpcurl and Postman use: the services, then the file that defines one of them."""
    list_services = _field(7, 2, b"")  # ServerReflectionRequest.list_services
    by_symbol = _field(4, 2, b"voice_workflow.VoiceGateway")  # .file_containing_symbol
    with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as ch:
        rpc = ch.stream_stream(REFLECTION, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        listed, described = list(rpc(iter([list_services, by_symbol]), timeout=20))
    # ServerReflectionResponse field 6 = list_services_response, of ServiceResponse names.
    assert b"\x32" in listed[:8], listed[:8]
    for name in [b"voice_workflow.VoiceGateway", b"grpc.health.v1.Health"]:
        assert name in listed, listed
    # Field 4 = file_descriptor_response: the FileDescriptorProto naming the method and messages.
    assert b"\x22" in described[:8], described[:8]
    for name in [b"StreamAudio", b"ClientMessage", b"ServerMessage"]:
        assert name in described, described[:200]
