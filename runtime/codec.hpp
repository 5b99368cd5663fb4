#pragma once
// Method arguments and results on the wire. A C++ struct names its Cap'n Proto struct as `Wire`
// and lists its members with `fields()` (std::tie, in the Wire struct's field order); this codec
// writes and reads them through Cap'n Proto's dynamic API, so no struct needs an encoder of its
// own, and check<T>() proves once, when a method is registered, that the two agree field by
// field.
#include <capnp/any.h>
#include <capnp/dynamic.h>
#include <capnp/schema.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "core/metrics.hpp"
#include "methods.capnp.h"

namespace flotilla::runtime::codec {

using Field = capnp::StructSchema::Field;
using Kind = capnp::schema::Type::Which;

template <class T>
capnp::StructSchema schema() {
  return capnp::Schema::from<typename T::Wire>();
}
template <class T>
uint64_t type_id() {
  return capnp::typeId<typename T::Wire>();
}
template <class T>
std::string type_name() {
  return schema<T>().getShortDisplayName().cStr();
}

// The members `fields()` ties, also for a const value (the codec only reads them then).
template <class T>
auto members(const T& value) {
  return const_cast<T&>(value).fields();
}

// ---- what each C++ type is on the wire ----

template <class T>
struct WireKind;
template <> struct WireKind<bool> { static constexpr Kind kind = Kind::BOOL; };
template <> struct WireKind<int32_t> { static constexpr Kind kind = Kind::INT32; };
template <> struct WireKind<int64_t> { static constexpr Kind kind = Kind::INT64; };
template <> struct WireKind<uint64_t> { static constexpr Kind kind = Kind::UINT64; };
template <> struct WireKind<double> { static constexpr Kind kind = Kind::FLOAT64; };
template <> struct WireKind<std::string> { static constexpr Kind kind = Kind::TEXT; };
template <class E>
struct WireKind<std::vector<E>> {
  static constexpr Kind kind = Kind::LIST;
  static constexpr Kind element = WireKind<E>::kind;
};
// core::Scalars is a List(Scalar) of {name, value}.
template <>
struct WireKind<core::Scalars> {
  static constexpr Kind kind = Kind::LIST;
  static constexpr Kind element = Kind::STRUCT;
};

std::string kind_name(Kind k);

// Throws naming `what` when `field` does not hold a C++ `T`.
template <class T>
void check_field(const Field& field, const std::string& what) {
  const capnp::Type type = field.getType();
  const std::string name = field.getProto().getName().cStr();
  if (type.which() != WireKind<T>::kind)
    throw Error(what + ": field '" + name + "' is " + kind_name(type.which()) + " on the wire, " +
                kind_name(WireKind<T>::kind) + " in C++");
  if constexpr (WireKind<T>::kind == Kind::LIST) {
    if (type.asList().getElementType().which() != WireKind<T>::element)
      throw Error(what + ": field '" + name + "' is a list of " + kind_name(type.asList().getElementType().which()) +
                  " on the wire, of " + kind_name(WireKind<T>::element) + " in C++");
  }
}

// Proves that T's fields() match its Wire struct in number and type; throws naming `what`.
template <class T>
void check(const std::string& what) {
  const auto fields = schema<T>().getFields();
  using Tuple = decltype(members(std::declval<const T&>()));
  constexpr size_t n = std::tuple_size_v<Tuple>;
  const std::string where = what + " (" + type_name<T>() + ")";
  if (fields.size() != n)
    throw Error(where + ": the C++ struct lists " + std::to_string(n) + " fields, the wire struct has " +
                std::to_string(fields.size()));
  [&]<size_t... I>(std::index_sequence<I...>) {
    (check_field<std::remove_cvref_t<std::tuple_element_t<I, Tuple>>>(fields[I], where), ...);
  }(std::make_index_sequence<n>{});
}

// ---- writing ----

void put(capnp::DynamicStruct::Builder b, const Field& f, bool v);
void put(capnp::DynamicStruct::Builder b, const Field& f, int32_t v);
void put(capnp::DynamicStruct::Builder b, const Field& f, int64_t v);
void put(capnp::DynamicStruct::Builder b, const Field& f, uint64_t v);
void put(capnp::DynamicStruct::Builder b, const Field& f, double v);
void put(capnp::DynamicStruct::Builder b, const Field& f, const std::string& v);
void put(capnp::DynamicStruct::Builder b, const Field& f, const core::Scalars& v);
void put(capnp::DynamicStruct::Builder b, const Field& f, const std::vector<int32_t>& v);
void put(capnp::DynamicStruct::Builder b, const Field& f, const std::vector<int64_t>& v);
void put(capnp::DynamicStruct::Builder b, const Field& f, const std::vector<double>& v);
void put(capnp::DynamicStruct::Builder b, const Field& f, const std::vector<std::string>& v);

// Writes `value` into `target` as its Wire struct.
template <class T>
void write(const T& value, capnp::AnyPointer::Builder target) {
  const capnp::StructSchema s = schema<T>();
  auto b = target.initAs<capnp::DynamicStruct>(s);
  const auto fields = s.getFields();
  std::apply([&](const auto&... m) {
    unsigned i = 0;
    (put(b, fields[i++], m), ...);
  }, members(value));
}

// ---- reading ----

void get(capnp::DynamicStruct::Reader r, const Field& f, bool& v);
void get(capnp::DynamicStruct::Reader r, const Field& f, int32_t& v);
void get(capnp::DynamicStruct::Reader r, const Field& f, int64_t& v);
void get(capnp::DynamicStruct::Reader r, const Field& f, uint64_t& v);
void get(capnp::DynamicStruct::Reader r, const Field& f, double& v);
void get(capnp::DynamicStruct::Reader r, const Field& f, std::string& v);
void get(capnp::DynamicStruct::Reader r, const Field& f, core::Scalars& v);
void get(capnp::DynamicStruct::Reader r, const Field& f, std::vector<int32_t>& v);
void get(capnp::DynamicStruct::Reader r, const Field& f, std::vector<int64_t>& v);
void get(capnp::DynamicStruct::Reader r, const Field& f, std::vector<double>& v);
void get(capnp::DynamicStruct::Reader r, const Field& f, std::vector<std::string>& v);

// Reads a T from `source`, which holds its Wire struct; a malformed one is a FormatError.
template <class T>
T read(capnp::AnyPointer::Reader source) {
  T value{};
  const capnp::StructSchema s = schema<T>();
  try {
    auto r = source.getAs<capnp::DynamicStruct>(s);
    const auto fields = s.getFields();
    std::apply([&](auto&... m) {
      unsigned i = 0;
      (get(r, fields[i++], m), ...);
    }, value.fields());
  } catch (const kj::Exception& e) {
    throw FormatError("a " + type_name<T>() + " that does not decode: " + e.getDescription().cStr());
  }
  return value;
}

}  // namespace flotilla::runtime::codec
