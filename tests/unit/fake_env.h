// A fake process environment for units of code that reads the launcher's variables.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "comm/launch_check.h"

namespace bnadapt::comm::fake_env {

using Env = std::map<std::string, std::string>;

inline EnvLookup lookup(const Env& env) {
  return [env](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
}

inline Env with(Env env, const Env& more) {
  for (const auto& [k, v] : more) env[k] = v;
  return env;
}

}  // namespace bnadapt::comm::fake_env
