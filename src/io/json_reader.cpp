#include "io/json_reader.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

namespace bnadapt::io {
namespace {

// Length of the UTF-8 sequence starting at s[i] (2 to 4), or 0 when s[i] does not start a
// well-formed one (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF).
std::size_t utf8Length(const std::string& s, std::size_t i) {
  const auto byte = [&s](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size() || byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k) {
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  }
  return n;
}

// nlohmann's message without its "[json.exception.parse_error.101] " prefix, made printable.
// The message quotes the token being read ("last read: '...'"), which can be megabytes of
// the text: a long `last_token` is cut to its end, where the offending character is.
std::string jsonMessage(const std::string& what, const std::string& last_token = "") {
  const std::string prefix = "[json.exception.";
  std::string message = what;
  if (what.compare(0, prefix.size(), prefix) == 0) {
    const auto end = what.find("] ");
    if (end != std::string::npos) message = what.substr(end + 2);
  }
  const std::size_t at =
      last_token.size() > kMaxShown ? message.find(last_token) : std::string::npos;
  if (at != std::string::npos) {
    message.replace(at, last_token.size(),
                    "..." + last_token.substr(last_token.size() - kMaxShown));
  }
  return shorten(message, 400);  // nlohmann's own text is shorter
}

// The SAX handler that builds the document (see the header).
template <typename JsonT>
class DocumentBuilder {
 public:
  explicit DocumentBuilder(const JsonSource& source) : src_(source) {}

  bool null() { return value(nullptr); }
  bool boolean(bool v) { return value(v); }
  bool number_integer(typename JsonT::number_integer_t v) { return value(v); }
  bool number_unsigned(typename JsonT::number_unsigned_t v) { return value(v); }
  bool number_float(typename JsonT::number_float_t v, const std::string& /*unused*/) {
    return value(v);
  }
  bool string(std::string& v) { return value(std::move(v)); }
  bool binary(typename JsonT::binary_t& /*unused*/) { return value(nullptr); }  // not in text
  bool start_object(std::size_t /*unused*/) { return start(JsonT::object()); }
  bool start_array(std::size_t /*unused*/) { return start(JsonT::array()); }
  bool end_object() { return end(); }
  bool end_array() { return end(); }

  bool key(std::string& key) {
    Frame& top = frames_.back();
    if (!top.keys.insert(key).second) {
      fail(src_.code, src_.name, ": duplicate key '", jsonChild(parentPath(), key), "'");
    }
    top.key = std::move(key);
    top.keep_value = top.node != nullptr && (!src_.keep || src_.keep(keyPath()));
    if (top.node != nullptr) slot_ = &(*top.node)[top.key];  // null until (unless) stored
    return true;
  }

  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::json::exception& ex) {
    fail(src_.code, src_.name, ": invalid JSON at byte ", position, ": ",
         jsonMessage(ex.what(), last_token));
  }

  JsonT takeRoot() { return std::move(root_); }

 private:
  struct Frame {
    bool is_object;
    JsonT* node;                           // the container being built; nullptr: not kept
    std::unordered_set<std::string> keys;  // objects: keys seen so far
    std::string key;                       // objects: key of the value being parsed
    bool keep_value;                       // objects: whether that value is stored;
                                           // arrays: whether the elements are
    std::size_t index;                     // arrays: index of the element being parsed
    std::size_t count;                     // arrays: elements started so far
  };

  // Stores a value in the open container (or as the root); nullptr when it is not kept.
  JsonT* place(JsonT&& v) {
    if (frames_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Frame& top = frames_.back();
    if (!top.is_object) top.index = top.count++;
    if (top.node == nullptr) return nullptr;
    if (!top.keep_value) return nullptr;
    if (top.is_object) {
      *slot_ = std::move(v);
      return slot_;
    }
    top.node->push_back(std::move(v));
    return &top.node->back();
  }

  template <typename T>
  bool value(T&& v) {
    place(JsonT(std::forward<T>(v)));
    return true;
  }

  bool start(JsonT&& empty) {
    if (frames_.size() >= static_cast<std::size_t>(src_.max_depth)) {
      Frame& top = frames_.back();
      if (!top.is_object) top.index = top.count;  // the path names the element being opened
      fail(src_.code, src_.name, ": JSON nested deeper than ", src_.max_depth, " levels at '",
           shorten(path(frames_.size())), "'");
    }
    const bool is_object = empty.is_object();
    JsonT* node = place(std::move(empty));
    frames_.push_back(Frame{is_object, node, {}, {}, false, 0, 0});
    if (!is_object) {  // elements are asked about once, by the path of the array
      frames_.back().keep_value = node != nullptr && (!src_.keep || src_.keep(keyPath()));
    }
    return true;
  }

  bool end() {
    frames_.pop_back();
    return true;
  }

  // The object keys from the root to the value being parsed.
  std::vector<std::string> keyPath() const {
    std::vector<std::string> keys;
    for (const Frame& f : frames_) {
      if (f.is_object) keys.push_back(f.key);
    }
    return keys;
  }

  // JSON path of the value being parsed inside the first `depth` open containers.
  std::string path(std::size_t depth) const {
    std::string out;
    for (std::size_t i = 0; i < depth; ++i) {
      const Frame& f = frames_[i];
      out = f.is_object ? jsonChild(out, f.key) : jsonElement(out, f.index);
    }
    return out;
  }

  // JSON path of the innermost open container.
  std::string parentPath() const { return path(frames_.empty() ? 0 : frames_.size() - 1); }

  const JsonSource& src_;
  std::vector<Frame> frames_;
  JsonT root_;
  JsonT* slot_ = nullptr;  // objects: where the value of the last key goes
};

}  // namespace

template <typename JsonT>
JsonT parseJson(std::string_view text, const JsonSource& source) {
  // nlohmann's lexer takes a NUL byte for the end of the input and would ignore the rest.
  if (const std::size_t nul = text.find('\0'); nul != std::string_view::npos) {
    const std::size_t line_start = text.rfind('\n', nul);
    fail(source.code, source.name, ": invalid JSON at byte ", nul + 1, ": NUL byte at line ",
         std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(nul), '\n') + 1,
         ", column ", line_start == std::string_view::npos ? nul + 1 : nul - line_start, " (",
         source.text_kind, " is UTF-8 text)");
  }
  DocumentBuilder<JsonT> builder(source);
  try {
    JsonT::sax_parse(text.begin(), text.end(), &builder, nlohmann::json::input_format_t::json,
                     /*strict=*/true, source.allow_comments);
  } catch (const nlohmann::json::exception& e) {  // not expected: parse errors come above
    fail(source.code, source.name, ": invalid JSON: ", jsonMessage(e.what()));
  }
  return builder.takeRoot();
}

template nlohmann::json parseJson<nlohmann::json>(std::string_view, const JsonSource&);
template nlohmann::ordered_json parseJson<nlohmann::ordered_json>(std::string_view,
                                                                  const JsonSource&);

std::string shorten(const std::string& s, std::size_t max) {
  static const char* const kHex = "0123456789abcdef";
  std::string out;
  const auto escape = [&out](const char* prefix, unsigned char c) {  // prefix + 2 hex digits
    out += prefix;
    out += kHex[c >> 4];
    out += kHex[c & 15];
  };
  std::size_t shown = 0;  // bytes of `s` consumed
  for (std::size_t i = 0; i < s.size(); i += shown) {
    if (out.size() >= max) return out + "...";
    const auto c = static_cast<unsigned char>(s[i]);
    shown = 1;
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7F) {
      escape("\\u00", c);
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else if ((shown = utf8Length(s, i)) == 0) {
      shown = 1;
      escape("\\x", c);
    } else {
      const std::string seq = s.substr(i, shown);
      if (seq == "\xC2\x85") {
        out += "\\u0085";
      } else if (seq == "\xE2\x80\xA8") {
        out += "\\u2028";
      } else if (seq == "\xE2\x80\xA9") {
        out += "\\u2029";
      } else if (seq == "\xEF\xBB\xBF") {
        out += "\\ufeff";
      } else {
        out += seq;
      }
    }
  }
  return out;
}

std::string describeJson(const nlohmann::json& v) {
  switch (v.type()) {
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::boolean:
      return std::string("boolean ") + (v.get<bool>() ? "true" : "false");
    case nlohmann::json::value_t::string: return "string " + shorten(v.dump());
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
    case nlohmann::json::value_t::number_float: return "number " + shorten(v.dump());
    case nlohmann::json::value_t::object: return "object";
    case nlohmann::json::value_t::array: return "array";
    default: return v.type_name();
  }
}

std::string jsonChild(const std::string& path, const std::string& key) {
  return path.empty() ? shorten(key) : path + "." + shorten(key);
}

std::string jsonElement(const std::string& path, std::size_t index) {
  return path + "[" + std::to_string(index) + "]";
}

}  // namespace bnadapt::io
