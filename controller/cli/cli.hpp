#pragma once
// The `flotilla` command line. Exit codes: 0 success, 1 failure at run time, 2 usage or config
// error (nothing ran), 130 stopped by Ctrl-C.

namespace flotilla::controller {

int cli_main(int argc, char** argv);

}  // namespace flotilla::controller
