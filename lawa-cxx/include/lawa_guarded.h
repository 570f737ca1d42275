// How lawa's C++ shims report failure across their C interfaces (see lawa-cxx's take_error):
// no C++ exception crosses into Rust.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

// Runs `body`; returns 0, or 1 with a malloc'ed copy of the C++ exception's message in *error
// (freed by the Rust side with free): no exception crosses the C interface.
template <typename F>
int lawa_guarded(char** error, F&& body) {
  auto copy = [](const std::string& message) {
    char* out = static_cast<char*>(std::malloc(message.size() + 1));
    if (out != nullptr) std::memcpy(out, message.c_str(), message.size() + 1);
    return out;
  };
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    *error = copy(e.what());
  } catch (...) {
    *error = copy("unknown C++ exception");
  }
  return 1;
}
