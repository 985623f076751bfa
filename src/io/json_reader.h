// The one strict JSON reader of the tool, for hostile text: the config file and the header of
// a safetensors checkpoint.
//
// One linear, non-recursive pass (nlohmann's SAX parser) that checks what nlohmann's DOM
// parser does not: duplicate keys (which a DOM silently merges), nesting deeper than a limit,
// NUL bytes (which nlohmann's lexer takes for the end of the input), and it reports syntax
// errors with their byte position. Values the caller does not want (JsonSource::keep) are
// checked but not stored, so megabytes of irrelevant keys cost only the scan.
//
// Every error is bnadapt::Error(source.code) with one printable line that starts with
// source.name; found text is quoted through shorten().
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace bnadapt::io {

struct JsonSource {
  std::string name;                    // the file (and part), first in every message
  ExitCode code = ExitCode::kUsage;    // the class of every error
  std::string text_kind = "JSON text";  // for the NUL message: "(a config file is UTF-8 text)"
  int max_depth = 64;                  // open objects and arrays at once
  bool allow_comments = false;         // /* */ and // comments
  // Whether the value under this key path (the object keys from the root, array levels left
  // out) is stored. A value not stored becomes null and its children are not asked about.
  // Empty: everything is stored.
  std::function<bool(const std::vector<std::string>& keys)> keep;
};

// Parses `text` into a document (nlohmann::json: keys sorted; ordered_json: file order).
template <typename JsonT>
JsonT parseJson(std::string_view text, const JsonSource& source);

extern template nlohmann::json parseJson<nlohmann::json>(std::string_view, const JsonSource&);
extern template nlohmann::ordered_json parseJson<nlohmann::ordered_json>(std::string_view,
                                                                         const JsonSource&);

// ---- message helpers -----------------------------------------------------------------------

// Longest found value quoted in a message.
constexpr std::size_t kMaxShown = 60;

// `s` made safe for one line of a message, at most about `max` bytes of it shown ("..." after
// a cut): control characters and DEL become \n, \t, \r or \u00XX; U+0085, U+2028 and U+2029
// (line breaks to some readers) and U+FEFF (invisible) \uXXXX; bytes that are not UTF-8 \xXX.
std::string shorten(const std::string& s, std::size_t max = kMaxShown);

// "string \"64\"", "number 64.5", "boolean true", "null", "object", "array".
std::string describeJson(const nlohmann::json& v);

// JSON paths for messages ("a.b[2].c"); keys are shown as shorten() shows them.
std::string jsonChild(const std::string& path, const std::string& key);
std::string jsonElement(const std::string& path, std::size_t index);

}  // namespace bnadapt::io
