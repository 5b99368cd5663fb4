#include "runtime/codec.hpp"

namespace flotilla::runtime::codec {

std::string kind_name(Kind k) {
  switch (k) {
    case Kind::VOID: return "Void";
    case Kind::BOOL: return "Bool";
    case Kind::INT8: return "Int8";
    case Kind::INT16: return "Int16";
    case Kind::INT32: return "Int32";
    case Kind::INT64: return "Int64";
    case Kind::UINT8: return "UInt8";
    case Kind::UINT16: return "UInt16";
    case Kind::UINT32: return "UInt32";
    case Kind::UINT64: return "UInt64";
    case Kind::FLOAT32: return "Float32";
    case Kind::FLOAT64: return "Float64";
    case Kind::TEXT: return "Text";
    case Kind::DATA: return "Data";
    case Kind::LIST: return "List";
    case Kind::ENUM: return "Enum";
    case Kind::STRUCT: return "Struct";
    case Kind::INTERFACE: return "Interface";
    case Kind::ANY_POINTER: return "AnyPointer";
  }
  return "?";
}

namespace {

template <class E, class V>
void put_list(capnp::DynamicStruct::Builder b, const Field& f, const std::vector<V>& v) {
  auto list = b.init(f, static_cast<unsigned>(v.size())).template as<capnp::DynamicList>();
  for (unsigned i = 0; i < v.size(); ++i) list.set(i, static_cast<E>(v[i]));
}

template <class E, class V>
void get_list(capnp::DynamicStruct::Reader r, const Field& f, std::vector<V>& v) {
  auto list = r.get(f).as<capnp::DynamicList>();
  v.clear();
  v.reserve(list.size());
  for (auto e : list) v.push_back(static_cast<V>(e.as<E>()));
}

}  // namespace

void put(capnp::DynamicStruct::Builder b, const Field& f, bool v) { b.set(f, v); }
void put(capnp::DynamicStruct::Builder b, const Field& f, int32_t v) { b.set(f, v); }
void put(capnp::DynamicStruct::Builder b, const Field& f, int64_t v) { b.set(f, v); }
void put(capnp::DynamicStruct::Builder b, const Field& f, uint64_t v) { b.set(f, v); }
void put(capnp::DynamicStruct::Builder b, const Field& f, double v) { b.set(f, v); }
void put(capnp::DynamicStruct::Builder b, const Field& f, const std::string& v) {
  b.set(f, capnp::Text::Reader(v.data(), v.size()));
}
void put(capnp::DynamicStruct::Builder b, const Field& f, const core::Scalars& v) {
  auto list = b.init(f, static_cast<unsigned>(v.size())).as<capnp::DynamicList>();
  for (unsigned i = 0; i < v.size(); ++i) {
    auto s = list[i].as<capnp::DynamicStruct>();
    s.set("name", capnp::Text::Reader(v[i].first.data(), v[i].first.size()));
    s.set("value", v[i].second);
  }
}
void put(capnp::DynamicStruct::Builder b, const Field& f, const std::vector<int32_t>& v) { put_list<int32_t>(b, f, v); }
void put(capnp::DynamicStruct::Builder b, const Field& f, const std::vector<int64_t>& v) { put_list<int64_t>(b, f, v); }
void put(capnp::DynamicStruct::Builder b, const Field& f, const std::vector<double>& v) { put_list<double>(b, f, v); }
void put(capnp::DynamicStruct::Builder b, const Field& f, const std::vector<std::string>& v) {
  auto list = b.init(f, static_cast<unsigned>(v.size())).as<capnp::DynamicList>();
  for (unsigned i = 0; i < v.size(); ++i) list.set(i, capnp::Text::Reader(v[i].data(), v[i].size()));
}

void get(capnp::DynamicStruct::Reader r, const Field& f, bool& v) { v = r.get(f).as<bool>(); }
void get(capnp::DynamicStruct::Reader r, const Field& f, int32_t& v) { v = r.get(f).as<int32_t>(); }
void get(capnp::DynamicStruct::Reader r, const Field& f, int64_t& v) { v = r.get(f).as<int64_t>(); }
void get(capnp::DynamicStruct::Reader r, const Field& f, uint64_t& v) { v = r.get(f).as<uint64_t>(); }
void get(capnp::DynamicStruct::Reader r, const Field& f, double& v) { v = r.get(f).as<double>(); }
void get(capnp::DynamicStruct::Reader r, const Field& f, std::string& v) { v = r.get(f).as<capnp::Text>().cStr(); }
void get(capnp::DynamicStruct::Reader r, const Field& f, core::Scalars& v) {
  v.clear();
  for (auto e : r.get(f).as<capnp::DynamicList>()) {
    auto s = e.as<capnp::DynamicStruct>();
    v.emplace_back(s.get("name").as<capnp::Text>().cStr(), s.get("value").as<double>());
  }
}
void get(capnp::DynamicStruct::Reader r, const Field& f, std::vector<int32_t>& v) { get_list<int32_t>(r, f, v); }
void get(capnp::DynamicStruct::Reader r, const Field& f, std::vector<int64_t>& v) { get_list<int64_t>(r, f, v); }
void get(capnp::DynamicStruct::Reader r, const Field& f, std::vector<double>& v) { get_list<double>(r, f, v); }
void get(capnp::DynamicStruct::Reader r, const Field& f, std::vector<std::string>& v) {
  v.clear();
  for (auto e : r.get(f).as<capnp::DynamicList>()) v.emplace_back(e.as<capnp::Text>().cStr());
}

}  // namespace flotilla::runtime::codec
