#pragma once
// A run's TCP sockets authenticate and encrypt with ZeroMQ CURVE. The controller makes the run's
// keys (a server pair and a client pair) and every process of the run loads them: a socket that
// binds is a CURVE server, one that connects a client. A handler on each ZeroMQ context (ZAP)
// admits only the run's client key; every other connection (another key, a plaintext peer, a
// broken handshake) is refused, counted and logged. IPC and in-process endpoints stay plain: the
// run directory's permissions guard them.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace zmq {
class context_t;
class socket_t;
}  // namespace zmq

namespace flotilla::core::curve {

struct KeyPair {
  std::string public_key, secret_key;  // Z85 text, 40 characters each
};

struct RunKeys {
  KeyPair server, client;
};

// A run's new keys; throws Error when this libzmq was built without CURVE.
RunKeys generate();
// Writes `keys` to `file`, readable by its owner only (0600); its directory is created 0700.
void write(const std::filesystem::path& file, const RunKeys& keys);
// Reads a key file made by write(); throws ConfigError naming the file when it is missing,
// malformed, or readable by anyone but its owner.
RunKeys read(const std::filesystem::path& file);

// The keys this process's TCP sockets use from here on (nullopt: plain TCP), and the file they
// came from, which workers started by this process load.
void use(std::optional<RunKeys> keys, const std::filesystem::path& file = {});
std::optional<std::filesystem::path> key_file();

// Binds `socket` (of `context`) to `endpoint`: a CURVE server when keys are in use and the
// endpoint is TCP. Throws Error naming the endpoint when it cannot bind.
void bind(zmq::context_t& context, zmq::socket_t& socket, const std::string& endpoint);
// Connects `socket` to `endpoint`: a CURVE client with the run's client key when keys are in use
// and the endpoint is TCP.
void connect(zmq::socket_t& socket, const std::string& endpoint);

// Connections this process's sockets have refused so far.
int64_t refused();

}  // namespace flotilla::core::curve
