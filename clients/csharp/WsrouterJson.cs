// WsrouterJson — the small JSON reader and writer the wsrouter client needs.
//
// No third-party package and no JsonUtility (which cannot read the
// protocol's maps keyed by topic, such as welcome.topics): Parse turns a
// JSON text into plain objects, Write does the reverse.
//
//   object     → Dictionary<string, object>   (duplicate keys: the last wins)
//   array      → List<object>
//   string     → string
//   number     → long when it is an integer that fits, else double
//   true/false → bool
//   null       → null
//
// Parse throws FormatException on malformed input. Write takes those types
// (plus int, IDictionary<string, object>, IEnumerable) and writes compact
// JSON with non-ASCII characters escaped as \uXXXX. Depth is limited (64)
// so that a hostile peer cannot overflow the stack.

using System;
using System.Collections;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace Wsrouter
{
    public static class WsrouterJson
    {
        const int MaxDepth = 64;

        public static object Parse(string text)
        {
            if (text == null)
                throw new ArgumentNullException("text");
            var reader = new Reader(text);
            reader.SkipSpace();
            object value = reader.ReadValue(0);
            reader.SkipSpace();
            if (reader.Pos != text.Length)
                throw reader.Error("text after the value");
            return value;
        }

        //  A member of an object, or null: Get(obj, "topics") as Dictionary<...>
        public static object Get(object obj, string key)
        {
            var map = obj as Dictionary<string, object>;
            object value;
            return map != null && map.TryGetValue(key, out value) ? value : null;
        }

        public static string GetString(object obj, string key)
        {
            return Get(obj, key) as string;
        }

        //  An integer member, or null when it is missing or not an integer
        public static long? GetLong(object obj, string key)
        {
            object value = Get(obj, key);
            if (value is long)
                return (long)value;
            return null;
        }

        public static string Write(object value)
        {
            var sb = new StringBuilder();
            WriteValue(sb, value, 0);
            return sb.ToString();
        }

        static void WriteValue(StringBuilder sb, object value, int depth)
        {
            if (depth > MaxDepth)
                throw new ArgumentException("WsrouterJson.Write: nested too deep");
            if (value == null)
                sb.Append("null");
            else if (value is string)
                WriteString(sb, (string)value);
            else if (value is bool)
                sb.Append((bool)value ? "true" : "false");
            else if (value is long || value is int || value is short || value is byte
                     || value is ulong || value is uint || value is ushort || value is sbyte)
                sb.Append(Convert.ToString(value, CultureInfo.InvariantCulture));
            else if (value is double || value is float || value is decimal) {
                double d = Convert.ToDouble(value, CultureInfo.InvariantCulture);
                if (double.IsNaN(d) || double.IsInfinity(d))
                    throw new ArgumentException("WsrouterJson.Write: not a JSON number");
                sb.Append(d.ToString("R", CultureInfo.InvariantCulture));
            }
            else if (value is IDictionary<string, object>) {
                sb.Append('{');
                bool first = true;
                foreach (var kv in (IDictionary<string, object>)value) {
                    if (!first)
                        sb.Append(',');
                    first = false;
                    WriteString(sb, kv.Key);
                    sb.Append(':');
                    WriteValue(sb, kv.Value, depth + 1);
                }
                sb.Append('}');
            }
            else if (value is IEnumerable) {
                sb.Append('[');
                bool first = true;
                foreach (object item in (IEnumerable)value) {
                    if (!first)
                        sb.Append(',');
                    first = false;
                    WriteValue(sb, item, depth + 1);
                }
                sb.Append(']');
            }
            else
                throw new ArgumentException("WsrouterJson.Write: cannot write a " + value.GetType());
        }

        static void WriteString(StringBuilder sb, string s)
        {
            sb.Append('"');
            foreach (char c in s) {
                switch (c) {
                    case '"': sb.Append("\\\""); break;
                    case '\\': sb.Append("\\\\"); break;
                    case '\n': sb.Append("\\n"); break;
                    case '\r': sb.Append("\\r"); break;
                    case '\t': sb.Append("\\t"); break;
                    default:
                        if (c < 0x20 || c > 0x7e)
                            sb.Append("\\u").Append(((int)c).ToString("x4"));
                        else
                            sb.Append(c);
                        break;
                }
            }
            sb.Append('"');
        }

        sealed class Reader
        {
            readonly string s;
            public int Pos;

            public Reader(string text)
            {
                s = text;
            }

            public FormatException Error(string what)
            {
                return new FormatException("JSON: " + what + " at " + Pos);
            }

            public void SkipSpace()
            {
                while (Pos < s.Length && (s[Pos] == ' ' || s[Pos] == '\t' || s[Pos] == '\n'
                                          || s[Pos] == '\r'))
                    Pos++;
            }

            public object ReadValue(int depth)
            {
                if (depth > MaxDepth)
                    throw Error("nested too deep");
                if (Pos >= s.Length)
                    throw Error("value expected");
                char c = s[Pos];
                if (c == '{')
                    return ReadObject(depth);
                if (c == '[')
                    return ReadArray(depth);
                if (c == '"')
                    return ReadString();
                if (c == '-' || (c >= '0' && c <= '9'))
                    return ReadNumber();
                if (Match("true"))
                    return true;
                if (Match("false"))
                    return false;
                if (Match("null"))
                    return null;
                throw Error("unexpected character");
            }

            bool Match(string word)
            {
                if (string.CompareOrdinal(s, Pos, word, 0, word.Length) != 0)
                    return false;
                Pos += word.Length;
                return true;
            }

            Dictionary<string, object> ReadObject(int depth)
            {
                var map = new Dictionary<string, object>();
                Pos++;
                SkipSpace();
                if (Pos < s.Length && s[Pos] == '}') {
                    Pos++;
                    return map;
                }
                for (;;) {
                    SkipSpace();
                    if (Pos >= s.Length || s[Pos] != '"')
                        throw Error("member name expected");
                    string key = ReadString();
                    SkipSpace();
                    if (Pos >= s.Length || s[Pos] != ':')
                        throw Error("':' expected");
                    Pos++;
                    SkipSpace();
                    map[key] = ReadValue(depth + 1);
                    SkipSpace();
                    if (Pos < s.Length && s[Pos] == ',') {
                        Pos++;
                        continue;
                    }
                    if (Pos < s.Length && s[Pos] == '}') {
                        Pos++;
                        return map;
                    }
                    throw Error("',' or '}' expected");
                }
            }

            List<object> ReadArray(int depth)
            {
                var list = new List<object>();
                Pos++;
                SkipSpace();
                if (Pos < s.Length && s[Pos] == ']') {
                    Pos++;
                    return list;
                }
                for (;;) {
                    SkipSpace();
                    list.Add(ReadValue(depth + 1));
                    SkipSpace();
                    if (Pos < s.Length && s[Pos] == ',') {
                        Pos++;
                        continue;
                    }
                    if (Pos < s.Length && s[Pos] == ']') {
                        Pos++;
                        return list;
                    }
                    throw Error("',' or ']' expected");
                }
            }

            string ReadString()
            {
                Pos++;
                var sb = new StringBuilder();
                while (Pos < s.Length) {
                    char c = s[Pos++];
                    if (c == '"')
                        return sb.ToString();
                    if (c < 0x20)
                        throw Error("control character in a string");
                    if (c != '\\') {
                        sb.Append(c);
                        continue;
                    }
                    if (Pos >= s.Length)
                        break;
                    char e = s[Pos++];
                    switch (e) {
                        case '"': sb.Append('"'); break;
                        case '\\': sb.Append('\\'); break;
                        case '/': sb.Append('/'); break;
                        case 'b': sb.Append('\b'); break;
                        case 'f': sb.Append('\f'); break;
                        case 'n': sb.Append('\n'); break;
                        case 'r': sb.Append('\r'); break;
                        case 't': sb.Append('\t'); break;
                        case 'u':
                            if (Pos + 4 > s.Length)
                                throw Error("short \\u escape");
                            int code;
                            if (!int.TryParse(s.Substring(Pos, 4), NumberStyles.AllowHexSpecifier,
                                              CultureInfo.InvariantCulture, out code))
                                throw Error("bad \\u escape");
                            sb.Append((char)code);
                            Pos += 4;
                            break;
                        default:
                            throw Error("bad escape");
                    }
                }
                throw Error("unterminated string");
            }

            object ReadNumber()
            {
                int start = Pos;
                if (s[Pos] == '-')
                    Pos++;
                bool integral = true;
                while (Pos < s.Length) {
                    char c = s[Pos];
                    if (c >= '0' && c <= '9')
                        Pos++;
                    else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                        integral = false;
                        Pos++;
                    }
                    else
                        break;
                }
                string text = s.Substring(start, Pos - start);
                long l;
                if (integral && long.TryParse(text, NumberStyles.AllowLeadingSign,
                                              CultureInfo.InvariantCulture, out l))
                    return l;
                double d;
                if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out d))
                    return d;
                throw Error("bad number");
            }
        }
    }
}
