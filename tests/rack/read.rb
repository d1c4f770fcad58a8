# Reads HTTP requests with the real Rack library (what Stripe's API servers are
# built on), so a Rust test can compare what Rack reads with what keyward
# classified.
#
# Input (stdin), one JSON object per line, as the test upstream recorded it:
#   {"method":"POST","target":"/v1/x?expand[]=a","headers":[["Name","value"],...],"body_b64":"..."}
# Output (stdout), one JSON object per input line, same order, flushed each time:
#   {"method","path","query_expand","form_expand","account","context","error"}
# `method` is REQUEST_METHOD after Rack::MethodOverride; the *_expand fields are
# Rack's GET/POST "expand" value as a list of strings (see expand_list).
#
# Usage: ruby tests/rack/read.rb [--new-puma] < requests.jsonl  (Debian's ruby-rack)
require "base64"
require "json"
require "rack"

# Builds the env the way Puma does from the raw request (checked against
# Puma's http11 parser and Puma::Request.req_env_post_parse).
#
# Header names, by default as Puma <= 6.4.2 / <= 5.6.8 does: upcase, "-" -> "_";
# CONTENT_TYPE and CONTENT_LENGTH stay bare, any other name gets HTTP_, and a
# key seen twice is joined with ", ". So `Content_Type` is the content type and
# `Stripe_Account` + `Stripe-Account` give HTTP_STRIPE_ACCOUNT = "a, b". This
# mapping aliases the most spellings, so it is the default.
#
# With `--new-puma`, as Puma >= 6.4.3 / 5.6.9 does (CVE-2024-45614): an
# underscore name never becomes CONTENT_TYPE (`Content_Type` ->
# HTTP_CONTENT_TYPE), `Content_Length` stays under "HTTP_CONTENT,LENGTH", and
# when both spellings come the dashed one wins and the underscore one is
# dropped. A lone `Stripe_Account` still gives HTTP_STRIPE_ACCOUNT.
# (WEBrick: only the dashed Content-Type/Length are bare, and of two spellings
# of one HTTP_ name the later overwrites the earlier; not emulated.)
# The two modes differ on what Rack reads, e.g. a body with only `Content_Type:
# text/plain` is not a form for old Puma and is a form for new Puma, so run both.
NEW_PUMA = ARGV.delete("--new-puma")

def add_header(env, name, value)
  key = name.upcase
  key = key.tr("_", ",") if NEW_PUMA # Puma's parser marks underscores this way
  key = key.tr("-", "_")
  key = "HTTP_#{key}" unless %w[CONTENT_TYPE CONTENT_LENGTH].include?(key)
  value = value.gsub(/\A[ \t]+|[ \t]+\z/, "") # Puma trims OWS
  env[key] = env.key?(key) ? "#{env[key]}, #{value}".b : value.b
end

def unmark_underscores(env) # new Puma, after all headers are in
  marked = env.keys.select { |k| k.start_with?("HTTP_") && k.include?(",") }
  marked -= ["HTTP_TRANSFER,ENCODING", "HTTP_CONTENT,LENGTH"]
  unmarked = {} # as Puma: a dashed header wins, else the last underscore one
  marked.each { |k| unmarked[k.tr(",", "_")] = env.delete(k) }
  unmarked.each { |k, v| env[k] ||= v }
end

# Target: Puma splits the raw target at the first "?" into PATH_INFO and
# QUERY_STRING and decodes neither. We set both ourselves because env_for's
# URI parser rejects targets like "?expand[]=%zz" that Puma accepts.
#
# Body: Puma sets CONTENT_LENGTH from the header or, for a chunked body, to
# the decoded length. env_for supplies rack.input, rack.errors and the like;
# we drop its CONTENT_LENGTH. It sets no CONTENT_TYPE (checked below), so a
# body sent without Content-Type is read as Rack reads a POST with none.
def build_env(req)
  body = Base64.strict_decode64(req["body_b64"] || "")
  env = Rack::MockRequest.env_for("/", input: body)
  env.delete("CONTENT_LENGTH")
  raise "env_for set a CONTENT_TYPE" if env.key?("CONTENT_TYPE")
  path, query = req["target"].split("?", 2)
  env["REQUEST_METHOD"] = req["method"].b # env_for would upcase it; Puma doesn't
  env["PATH_INFO"] = path.b
  env["QUERY_STRING"] = (query || "").b
  req["headers"].each { |name, value| add_header(env, name, value) }
  unmark_underscores(env) if NEW_PUMA
  env["CONTENT_LENGTH"] ||= body.bytesize.to_s unless body.empty?
  env
end

# Turns a string into UTF-8 for JSON; bytes that are not valid UTF-8 become U+FFFD.
def text(s)
  s.nil? ? nil : s.dup.force_encoding(Encoding::UTF_8).scrub
end

# nil -> nil; String -> [s]; Array -> elements; Hash -> values in order;
# any element that is not a String -> its JSON, so a mismatch shows.
def expand_list(v)
  items = case v
          when nil then return nil
          when Array then v
          when Hash then v.values
          else [v]
          end
  items.map { |x| x.is_a?(String) ? text(x) : JSON.generate(jsonable(x)) }
end

# Something JSON can hold (uploaded files and binary strings become text).
def jsonable(x)
  case x
  when String then text(x)
  when Array then x.map { |e| jsonable(e) }
  when Hash then x.to_h { |k, e| [text(k.to_s), jsonable(e)] }
  else text(x.inspect)
  end
end

def read_request(line)
  out = { "method" => nil, "path" => nil, "query_expand" => nil, "form_expand" => nil,
          "account" => nil, "context" => nil, "error" => nil }
  env = build_env(JSON.parse(line))
  out["account"] = text(env["HTTP_STRIPE_ACCOUNT"])
  out["context"] = text(env["HTTP_STRIPE_CONTEXT"])
  seen = nil
  Rack::MethodOverride.new(->(e) { seen = e; [200, {}, []] }).call(env)
  out["method"] = text(seen["REQUEST_METHOD"])
  out["path"] = text(seen["PATH_INFO"])
  req = Rack::Request.new(seen)
  out["query_expand"] = expand_list(req.GET["expand"])
  # MethodOverride rescues parse errors and leaves the body half read; rewind so
  # the error shows up here, where it isn't swallowed.
  seen["rack.input"].rewind
  out["form_expand"] = expand_list(req.POST["expand"])
  out
rescue StandardError, SystemStackError => e # one bad input must not end the run
  out["error"] = text("#{e.class}: #{e.message}")
  out
end

$stdout.sync = true
$stdin.each_line do |line|
  next if line.strip.empty?
  puts JSON.generate(read_request(line))
end
