// S3Client: see s3_client.h. libcurl does the HTTP and the SigV4 signature; this file builds
// the URLs, retries, and turns S3's answers into Status.
#include "repository/s3_client.h"

#include <curl/curl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "repository/digest.h"
#include "repository/object_store.h"

namespace blksnap::repo {
namespace {

Status Bad(const std::string& what) { return Status::Error(EINVAL, "s3 URL: " + what); }

// A Content-Length over this is not trusted for reserving a body (it still arrives, grown).
constexpr size_t kMaxObjectReserve = 256 << 20;

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

std::string Trim(const std::string& text) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\r\n") - first + 1);
}

Result<std::string> PercentDecode(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    if (i + 2 >= text.size() || !std::isxdigit(static_cast<unsigned char>(text[i + 1])) ||
        !std::isxdigit(static_cast<unsigned char>(text[i + 2])))
      return Bad("bad %-escape in '" + text + "'");
    out += static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16));
    i += 2;
  }
  return out;
}

bool ValidBucket(const std::string& bucket) {
  if (bucket.size() < 3 || bucket.size() > 63) return false;
  for (char c : bucket) {
    if (!(std::islower(static_cast<unsigned char>(c)) ||
          std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '.'))
      return false;
  }
  return std::isalnum(static_cast<unsigned char>(bucket.front())) &&
         std::isalnum(static_cast<unsigned char>(bucket.back()));
}

// An AWS shared credentials file: [profile] sections of key = value lines.
Result<S3Credentials> ReadCredentialsFile(const std::string& path, const std::string& profile) {
  std::ifstream in(path);
  if (!in) return Status::FromErrno("s3 credentials file " + path);
  S3Credentials out;
  std::string line, section;
  bool found = false;
  while (std::getline(in, line)) {
    line = Trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = Trim(line.substr(1, line.size() - 2));
      if (section.rfind("profile ", 0) == 0) section = Trim(section.substr(8));
      found = found || section == profile;
      continue;
    }
    if (section != profile) continue;
    const size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = Lower(Trim(line.substr(0, eq)));
    const std::string value = Trim(line.substr(eq + 1));
    if (key == "aws_access_key_id") out.access_key = value;
    if (key == "aws_secret_access_key") out.secret_key = value;
    if (key == "aws_session_token") out.session_token = value;
  }
  if (!found)
    return Status::Error(ENOKEY, "s3 credentials file " + path + ": no profile '" + profile + "'");
  if (out.access_key.empty() || out.secret_key.empty())
    return Status::Error(ENOKEY, "s3 credentials file " + path + ": profile '" + profile +
                                     "' lacks aws_access_key_id or aws_secret_access_key");
  return out;
}

std::once_flag curl_once;

// Where a response's body goes: the caller's buffer (`into`, for a 200) or response->body,
// reserved once from the Content-Length (growing it by curl's 16 KiB pieces copied a 4 MiB
// chunk over and over: a quarter of a restore's CPU).
struct BodySink {
  CURL* handle = nullptr;
  S3Response* response = nullptr;
  std::span<uint8_t>* into = nullptr;
  bool to_into = false, decided = false, overflow = false;
};

size_t WriteBody(char* data, size_t size, size_t count, void* user) {
  auto* sink = static_cast<BodySink*>(user);
  const size_t n = size * count;
  S3Response& response = *sink->response;
  if (!sink->decided) {
    sink->decided = true;
    long status = 0;
    curl_easy_getinfo(sink->handle, CURLINFO_RESPONSE_CODE, &status);
    sink->to_into = sink->into != nullptr && status == 200;
    curl_off_t length = -1;
    if (!sink->to_into &&
        curl_easy_getinfo(sink->handle, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) == CURLE_OK &&
        length > 0 && length <= static_cast<curl_off_t>(kMaxObjectReserve)) {
      response.body.reserve(static_cast<size_t>(length));
    }
  }
  if (sink->to_into) {
    if (n > sink->into->size() - response.body_size) {
      sink->overflow = true;
      return 0;  // curl stops the transfer: CURLE_WRITE_ERROR
    }
    std::memcpy(sink->into->data() + response.body_size, data, n);
  } else {
    response.body.insert(response.body.end(), data, data + n);
  }
  response.body_size += n;
  return n;
}

size_t WriteHeader(char* data, size_t size, size_t count, void* user) {
  auto* headers = static_cast<std::map<std::string, std::string>*>(user);
  const std::string line(data, size * count);
  const size_t colon = line.find(':');
  if (colon != std::string::npos)
    (*headers)[Lower(Trim(line.substr(0, colon)))] = Trim(line.substr(colon + 1));
  return size * count;
}

struct Upload {
  std::span<const uint8_t> data;
  size_t offset = 0;
};

size_t ReadBody(char* out, size_t size, size_t count, void* user) {
  auto* upload = static_cast<Upload*>(user);
  const size_t n = std::min(size * count, upload->data.size() - upload->offset);
  std::memcpy(out, upload->data.data() + upload->offset, n);
  upload->offset += n;
  return n;
}

bool TransientStatus(long status) {
  return status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

bool TransientCurl(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
      return true;
    default:
      return false;
  }
}

std::string XmlField(const std::vector<uint8_t>& body, const std::string& tag) {
  const std::string text(body.begin(), body.end());
  const size_t open = text.find("<" + tag + ">");
  if (open == std::string::npos) return "";
  const size_t start = open + tag.size() + 2;
  const size_t close = text.find("</" + tag + ">", start);
  return close == std::string::npos ? "" : text.substr(start, close - start);
}

}  // namespace

Result<S3Location> ParseS3Url(const std::string& url) {
  if (url.rfind("s3://", 0) != 0) return Bad("'" + url + "' does not start with s3://");
  const std::string rest = url.substr(5);
  const size_t question = rest.find('?');
  const std::string path = rest.substr(0, question);
  S3Location loc;
  const size_t slash = path.find('/');
  loc.bucket = path.substr(0, slash);
  if (!ValidBucket(loc.bucket))
    return Bad("bucket '" + loc.bucket + "': 3-63 characters of [a-z0-9.-]");
  if (slash != std::string::npos) {
    std::string prefix = path.substr(slash + 1);
    while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
    if (!prefix.empty()) {
      if (Status s = ValidateObjectName(prefix); !s.ok())
        return Bad("prefix: " + std::string(s.message()));
      loc.prefix = prefix + "/";
    }
  }
  bool style_given = false;
  if (question != std::string::npos) {
    std::string query = rest.substr(question + 1);
    size_t start = 0;
    while (start <= query.size()) {
      const size_t amp = std::min(query.find('&', start), query.size());
      const std::string pair = query.substr(start, amp - start);
      start = amp + 1;
      if (pair.empty()) continue;
      const size_t eq = pair.find('=');
      if (eq == std::string::npos) return Bad("'" + pair + "' is not key=value");
      const std::string key = pair.substr(0, eq);
      BLKSNAP_ASSIGN_OR_RETURN(std::string value, PercentDecode(pair.substr(eq + 1)));
      if (key == "endpoint") {
        while (!value.empty() && value.back() == '/') value.pop_back();
        if (value.rfind("http://", 0) != 0 && value.rfind("https://", 0) != 0)
          return Bad("endpoint '" + value + "' is not an http:// or https:// URL");
        loc.endpoint = value;
      } else if (key == "region") {
        if (value.empty()) return Bad("empty region");
        loc.region = value;
      } else if (key == "style") {
        if (value != "path" && value != "virtual") return Bad("style is path or virtual");
        loc.path_style = value == "path";
        style_given = true;
      } else if (key == "credentials") {
        loc.credentials_file = value;
      } else if (key == "profile") {
        loc.profile = value;
      } else {
        return Bad("unknown parameter '" + key + "'");
      }
    }
  }
  if (loc.endpoint.empty()) {
    loc.endpoint = "https://s3." + loc.region + ".amazonaws.com";
    if (!style_given) loc.path_style = false;
  }
  return loc;
}

Result<S3Credentials> LoadS3Credentials(const S3Location& location) {
  std::string profile = location.profile;
  if (profile.empty()) {
    const char* env = std::getenv("AWS_PROFILE");
    profile = env && *env ? env : "default";
  }
  if (!location.credentials_file.empty())
    return ReadCredentialsFile(location.credentials_file, profile);
  const char* key = std::getenv("AWS_ACCESS_KEY_ID");
  const char* secret = std::getenv("AWS_SECRET_ACCESS_KEY");
  if (key && *key && secret && *secret) {
    const char* token = std::getenv("AWS_SESSION_TOKEN");
    return S3Credentials{key, secret, token ? token : ""};
  }
  std::string file;
  if (const char* env = std::getenv("AWS_SHARED_CREDENTIALS_FILE"); env && *env) {
    file = env;
  } else if (const char* home = std::getenv("HOME"); home && *home) {
    file = std::string(home) + "/.aws/credentials";
  }
  if (!file.empty() && ::access(file.c_str(), F_OK) == 0) return ReadCredentialsFile(file, profile);
  return Status::Error(ENOKEY,
                       "s3: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                       "credentials=FILE in the URL)");
}

std::string S3Response::Header(const std::string& name) const {
  auto it = headers.find(Lower(name));
  return it == headers.end() ? "" : it->second;
}

S3Client::S3Client(S3Location location, S3Credentials credentials)
    : location_(std::move(location)), credentials_(std::move(credentials)) {
  std::call_once(curl_once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

S3Client::~S3Client() {
  MutexLock lock(mu_);
  for (void* h : handles_) curl_easy_cleanup(static_cast<CURL*>(h));
}

void* S3Client::TakeHandle() {
  {
    MutexLock lock(mu_);
    if (!handles_.empty()) {
      void* h = handles_.back();
      handles_.pop_back();
      return h;
    }
  }
  return curl_easy_init();
}

void S3Client::GiveHandle(void* handle) {
  MutexLock lock(mu_);
  handles_.push_back(handle);
}

std::string S3Client::UrlFor(const std::string& key, const std::string& query) const {
  std::string url;
  if (location_.path_style) {
    url = location_.endpoint + "/" + location_.bucket + (key.empty() ? "" : "/" + key);
  } else {
    const size_t scheme = location_.endpoint.find("://") + 3;
    url = location_.endpoint.substr(0, scheme) + location_.bucket + "." +
          location_.endpoint.substr(scheme) + "/" + key;
  }
  if (!query.empty()) url += "?" + query;
  return url;
}

Result<S3Response> S3Client::Request(const std::string& method, const std::string& key,
                                     const std::string& query, std::span<const uint8_t> body,
                                     const std::vector<std::string>& headers,
                                     std::span<uint8_t>* into) {
  const std::string url = UrlFor(key, query);
  const std::string sigv4 = "aws:amz:" + location_.region + ":s3";
  const std::string payload_hash = "x-amz-content-sha256: " + Sha256(body).Hex();
  std::mt19937 jitter(std::random_device{}());
  for (int attempt = 0;; ++attempt) {
    S3Response response;
    Upload upload{body, 0};
    CURL* h = static_cast<CURL*>(TakeHandle());
    if (!h) return Status::Error(ENOMEM, "s3: curl_easy_init failed");
    curl_easy_reset(h);
    curl_slist* list = nullptr;
    list = curl_slist_append(list, payload_hash.c_str());
    if (!credentials_.session_token.empty())
      list =
          curl_slist_append(list, ("x-amz-security-token: " + credentials_.session_token).c_str());
    for (const auto& header : headers) list = curl_slist_append(list, header.c_str());
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4.c_str());
    curl_easy_setopt(h, CURLOPT_USERNAME, credentials_.access_key.c_str());
    curl_easy_setopt(h, CURLOPT_PASSWORD, credentials_.secret_key.c_str());
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);  // a stalled transfer: 60 s without a byte
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
    BodySink sink{h, &response, into};
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, WriteBody);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, WriteHeader);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &response.headers);
    if (method == "HEAD") {
      curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (method == "PUT") {
      curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(h, CURLOPT_READFUNCTION, ReadBody);
      curl_easy_setopt(h, CURLOPT_READDATA, &upload);
      curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(body.size()));
    } else if (method != "GET") {
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method.c_str());
    }
    const CURLcode code = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &response.status);
    curl_slist_free_all(list);
    GiveHandle(h);
    if (sink.overflow) {
      return Status::Error(EMSGSIZE, "s3 " + method + " " + location_.bucket + "/" + key +
                                         ": longer than " + std::to_string(into->size()) +
                                         " bytes");
    }
    const bool transient =
        code != CURLE_OK ? TransientCurl(code) : TransientStatus(response.status);
    if (transient && attempt + 1 < kMaxAttempts) {
      const int delay_ms = std::min(5000, 100 << attempt) + static_cast<int>(jitter() % 100);
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      continue;
    }
    if (code != CURLE_OK) {
      const int errnum = code == CURLE_COULDNT_CONNECT      ? ECONNREFUSED
                         : code == CURLE_OPERATION_TIMEDOUT ? ETIMEDOUT
                                                            : EIO;
      return Status::Error(errnum, "s3 " + method + " " + location_.bucket + "/" + key + ": " +
                                       curl_easy_strerror(code) + " (" + location_.endpoint + ")");
    }
    return response;
  }
}

Status S3Client::ErrorOf(const S3Response& response, const std::string& what) {
  const std::string code = XmlField(response.body, "Code");
  const std::string detail =
      "HTTP " + std::to_string(response.status) + (code.empty() ? "" : " " + code);
  if (code == "NoSuchBucket")
    return Status::Error(ENOENT, what + ": no such bucket (" + detail + ")");
  if (response.status == 404) return Status::Error(ENOENT, what + ": not found (" + detail + ")");
  if (response.status == 403 || response.status == 401)
    return Status::Error(EACCES, what + ": access denied (" + detail + "; check the credentials)");
  if (response.status == 412 || response.status == 409)
    return Status::Error(EEXIST, what + ": exists (" + detail + ")");
  if (response.status == 507 || code == "QuotaExceeded" || code == "EntityTooLarge")
    return Status::Error(ENOSPC, what + ": no space (" + detail + ")");
  return Status::Error(EIO, what + ": " + detail);
}

int64_t S3ParseTime(const std::string& text) {
  for (const char* format : {"%Y-%m-%dT%H:%M:%S", "%a, %d %b %Y %H:%M:%S"}) {
    struct tm tm {};
    if (strptime(text.c_str(), format, &tm)) return static_cast<int64_t>(timegm(&tm));
  }
  return -1;
}

}  // namespace blksnap::repo
