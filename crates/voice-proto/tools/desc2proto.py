"""Print .proto source for the Riva files from the descriptors in nvidia-riva-client."""
import sys, os
from google.protobuf import descriptor_pb2
from riva.client.proto import riva_asr_pb2, riva_tts_pb2, riva_audio_pb2, riva_common_pb2
FD = descriptor_pb2.FieldDescriptorProto
SCALAR = {FD.TYPE_DOUBLE:"double",FD.TYPE_FLOAT:"float",FD.TYPE_INT64:"int64",FD.TYPE_UINT64:"uint64",FD.TYPE_INT32:"int32",FD.TYPE_FIXED64:"fixed64",FD.TYPE_FIXED32:"fixed32",FD.TYPE_BOOL:"bool",FD.TYPE_STRING:"string",FD.TYPE_BYTES:"bytes",FD.TYPE_UINT32:"uint32",FD.TYPE_SFIXED32:"sfixed32",FD.TYPE_SFIXED64:"sfixed64",FD.TYPE_SINT32:"sint32",FD.TYPE_SINT64:"sint64"}
def tname(f):
    if f.type in SCALAR: return SCALAR[f.type]
    return f.type_name
def pmsg(msg, ind, out):
    maps = {nt.name: nt for nt in msg.nested_type if nt.options.map_entry}
    out.append(f"{ind}message {msg.name} {{")
    for e in msg.enum_type:
        out.append(f"{ind}  enum {e.name} {{")
        for v in e.value: out.append(f"{ind}    {v.name} = {v.number};")
        out.append(f"{ind}  }}")
    for nt in msg.nested_type:
        if not nt.options.map_entry: pmsg(nt, ind+"  ", out)
    done_oneof = set()
    for f in msg.field:
        if f.HasField("oneof_index") and not f.proto3_optional:
            oi = f.oneof_index
            if oi in done_oneof: continue
            done_oneof.add(oi)
            out.append(f"{ind}  oneof {msg.oneof_decl[oi].name} {{")
            for g in msg.field:
                if g.HasField("oneof_index") and g.oneof_index == oi and not g.proto3_optional:
                    out.append(f"{ind}    {tname(g)} {g.name} = {g.number};")
            out.append(f"{ind}  }}")
            continue
        short = f.type_name.split(".")[-1]
        if f.label == FD.LABEL_REPEATED and short in maps and f.type == FD.TYPE_MESSAGE:
            me = maps[short]
            out.append(f"{ind}  map<{tname(me.field[0])}, {tname(me.field[1])}> {f.name} = {f.number};")
            continue
        lab = "repeated " if f.label == FD.LABEL_REPEATED else ("optional " if f.proto3_optional else "")
        out.append(f"{ind}  {lab}{tname(f)} {f.name} = {f.number};")
    out.append(f"{ind}}}")
for m in [riva_audio_pb2, riva_common_pb2, riva_asr_pb2, riva_tts_pb2]:
    fdp = descriptor_pb2.FileDescriptorProto(); m.DESCRIPTOR.CopyToProto(fdp)
    out = ["// Generated from the descriptors in PyPI nvidia-riva-client 2.28.0",
           f"// (riva.client.proto, originally {fdp.name} from nvidia-riva/common, MIT licence).",
           "// Regenerate with crates/voice-proto/tools/desc2proto.py; field numbers are the wire contract.",
           'syntax = "proto3";', "", f"package {fdp.package};", ""]
    for d in fdp.dependency: out.append(f'import "{d}";')
    if fdp.dependency: out.append("")
    for e in fdp.enum_type:
        out.append(f"enum {e.name} {{")
        for v in e.value: out.append(f"  {v.name} = {v.number};")
        out.append("}"); out.append("")
    for msg in fdp.message_type: pmsg(msg, "", out); out.append("")
    for s in fdp.service:
        out.append(f"service {s.name} {{")
        for me in s.method:
            cs = "stream " if me.client_streaming else ""; ss = "stream " if me.server_streaming else ""
            out.append(f"  rpc {me.name}({cs}{me.input_type}) returns ({ss}{me.output_type}) {{}}")
        out.append("}")
    name = os.path.basename(fdp.name)
    open(os.path.join(sys.argv[1], name), "w").write("\n".join(out) + "\n")
    print("wrote", name)
