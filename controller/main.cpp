#include "controller/cli/cli.hpp"

int main(int argc, char** argv) { return flotilla::controller::cli_main(argc, argv); }
