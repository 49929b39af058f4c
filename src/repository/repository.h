// Repository: the backup repository of issue 16 (layer 3), built on an ObjectStore (layer 1: the
// objects, the Codec) and the catalog (layer 2: Index, Manifest, retention). Formats and the order
// of operations: docs/repository-format.md (section 7 for what this file does).
//
// Objects: "config" (written once by Init with PutIfAbsent), "chunks/XX/<hex>" (a sealed chunk,
// AAD = the 32 id bytes), "indexes/<hex>" (a sealed encoded Index, hex = ChunkId of the encoded
// bytes, AAD = the id bytes), "backups/<id>" (a sealed manifest, AAD = the object name's bytes,
// published with PutIfAbsent LAST by a backup: a backup killed before that leaves only
// unreferenced chunks and indexes, which the next backup reuses and gc frees).
//
// Concurrency: backups hold BackupLease() (the store's kShared lock) for their whole run; Gc takes
// kExclusive without waiting and refuses (EBUSY) while any backup runs, so it never frees a chunk
// that a running backup found present and did not store again. Verify holds a shared lease too;
// with repair, the exclusive one without waiting (as Gc: it deletes the damaged objects).
// Prune only deletes manifests and needs no lease.
//
// Thread safety: every method may be called from many threads at once. The Codec is immutable
// and the store is thread-safe; the only mutable state is spare_frames_ and in_flight_ (mu_), the
// ids of chunks being stored right now, so that two threads storing the same chunk store it once
// (the second waits for the first and reports stored=false). No lock is held across store I/O.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "blksnap/status.h"
#include "repository/chunk_table.h"
#include "repository/codec.h"
#include "repository/digest.h"
#include "repository/index.h"
#include "repository/manifest.h"
#include "repository/object_store.h"
#include "repository/retention.h"
#include "util/mutex.h"
#include "util/thread_annotations.h"

namespace blksnap::repo {

class Repository {
 public:
  // Writes "config" with PutIfAbsent (EEXIST "a repository exists in this store"); a key makes
  // the repository encrypted.
  static Status Init(ObjectStore& store, const NewRepoOptions& options,
                     std::optional<std::span<const uint8_t>> key);
  // Reads and checks "config" (ENOENT "no repository in this store"), opens the Codec (EACCES for
  // a wrong or missing key, EINVAL for a key given to a plain repository).
  static Result<std::unique_ptr<Repository>> Open(std::unique_ptr<ObjectStore> store,
                                                  std::optional<std::span<const uint8_t>> key);
  // The repository at `location` (a directory, rados:// or s3://: store_url.h), with the key
  // read from `key_file` ("": none).
  static Result<std::unique_ptr<Repository>> OpenAt(const std::string& location,
                                                    const std::string& key_file);

  Repository(const Repository&) = delete;
  Repository& operator=(const Repository&) = delete;

  const Codec& codec() const { return codec_; }
  uint64_t chunk_size() const { return codec_.config().chunk_size; }
  ObjectStore& store() { return *store_; }

  struct Put {
    Digest id;
    bool stored = false;        // a new blob was written (false: the chunk was present)
    uint64_t stored_bytes = 0;  // the new blob's size
  };
  // Stores a chunk unless an object of its id exists (dedup). The caller skips zero chunks.
  // Through `batch` (NewChunkBatch; a chunk it holds counts as present), the chunk is durable
  // only once batch->Commit() returns: a backup commits before it stores its index.
  // `seal_buffer`: the caller's buffer for the sealed blob (Codec::SealInto), reused from chunk
  // to chunk by a worker; without one, each new chunk is sealed into a fresh allocation.
  Result<Put> PutChunk(std::span<const uint8_t> plain, PutBatch* batch = nullptr,
                       std::vector<uint8_t>* seal_buffer = nullptr) EXCLUDES(mu_);
  // PutChunk of the first `length` bytes of frame.plain() (a backup worker's chunk buffer): a
  // chunk stored raw in a plain repository is sealed around its bytes in the frame
  // (Codec::SealFramed), without a copy into `seal_buffer`. The chunk's bytes are not modified.
  Result<Put> PutChunk(ChunkFrame& frame, size_t length, PutBatch* batch,
                       std::vector<uint8_t>* seal_buffer) EXCLUDES(mu_);
  std::unique_ptr<PutBatch> NewChunkBatch() { return store_->NewPutBatch(); }
  // Segmented repositories (codec().segmented()): stores the chunk `plain` (the parent's
  // version with the segments `changed`, sorted, rewritten: the others are not read) as a delta
  // over `base`, whose table is `base_table` (ReadTable), unless a chunk of its id exists. EINVAL
  // when the base's depth is already kMaxDeltaDepth (store a full chunk: PutChunk) or its table
  // does not fit. The id is named from base_table's digests and those of the changed segments.
  Result<Put> PutDelta(const Digest& base, const ChunkTable& base_table,
                       std::span<const uint8_t> plain, std::span<const uint32_t> changed,
                       PutBatch* batch, std::vector<uint8_t>* seal_buffer) EXCLUDES(mu_);
  // The table of a segmented chunk, from the end of its object (ObjectStore::ReadTail): ENOENT
  // "chunk <hex> is missing", EBADMSG for damage or a segment size not the repository's.
  Result<ChunkTable> ReadTable(const Digest& id);
  // The chunk's plain bytes, checked: ENOENT "chunk <hex> is missing"; EBADMSG "chunk <hex>: ..."
  // when the blob does not unseal or its content does not hash to the id.
  Result<std::vector<uint8_t>> GetChunk(const Digest& id);
  // GetChunk into a caller's buffer (no allocation of the plain bytes): the chunk's length, with
  // the same checks and errors; EBADMSG also when the chunk is longer than out.size().
  Result<size_t> ReadChunk(const Digest& id, std::span<uint8_t> out);
  // How much of a chunk a read checks. kSeal: the blob opens (its CRC-32C or GCM tag, which also
  // covers the id as AAD, so a blob under another chunk's name fails) and decodes to its
  // header's length, zstd checking the content checksum a compressed payload carries; this
  // catches any damage in the store. kDigest also re-hashes the plain bytes (SHA-256, or HMAC)
  // and compares them with the id, which catches a blob a writer sealed from other bytes than it
  // hashed: that costs as much CPU as the decompression (docs/backup.md, "Restore").
  enum class ChunkCheck { kSeal, kDigest };
  // ReadChunk into frame.plain() (a restore worker's chunk buffer): the blob is read into the
  // frame around it (ObjectStore::ReadInto: no allocation), so a raw payload needs no copy
  // (Codec::UnsealFramed). EBADMSG also when the blob is longer than a chunk of the frame's
  // capacity can make.
  Result<size_t> ReadChunk(const Digest& id, ChunkFrame& frame,
                           ChunkCheck check = ChunkCheck::kDigest);

  // Stores an index (CheckIndex first: EINVAL) as "indexes/<hex>"; returns its id.
  Result<Digest> PutIndex(const Index& index);
  // ENOENT "index <hex> is missing", EBADMSG "index <hex>: ..." like GetChunk, then ParseIndex.
  Result<Index> GetIndex(const Digest& id);

  // Publishes a manifest as "backups/<id>" (PutIfAbsent: EEXIST if the id is taken). EINVAL if it
  // fails CheckManifest or its chunk size is not the repository's; ENOENT if its index object is
  // missing. A backup calls this LAST, after every chunk and its index are stored.
  Status PublishBackup(const Manifest& manifest);
  // EINVAL for an invalid id, ENOENT "backup <id> not found", EBADMSG "backup <id>: ..." for a
  // damaged object or one whose manifest names another id.
  Result<Manifest> GetBackup(const std::string& id);
  // Every readable backup, sorted by id (time). A manifest that cannot be read or parsed (any
  // error but ENOENT, which means it was just deleted) is skipped and, when `damaged` is given,
  // reported there as (id, error); a name under "backups/" that is not a valid id counts too.
  Result<std::vector<Manifest>> ListBackups(
      std::vector<std::pair<std::string, Status>>* damaged = nullptr);

  struct VerifyProblem {
    Digest chunk;  // the chunk or index; zero for a manifest that cannot be read
    Status error;
    std::vector<std::string> backups;  // every given backup it affects, sorted
    bool index = false;                // `chunk` names an index
    bool moved_aside = false;          // repair: the object is now "bad/<its name>"
  };
  // Re-reads and re-hashes every chunk and index the given backups reference (all backups if
  // empty; a named backup that does not exist is ENOENT), each chunk once, `threads` at a time.
  // `progress` (done, total) counts chunks; it is called from the workers, one call at a time.
  // Problems are sorted by digest. The result is an error only when verification could not run.
  //
  // repair (`repo verify --repair`; verify.cc): under the exclusive lease, not waiting (EBUSY
  // while a backup runs, as gc), every damaged chunk or index object found is moved aside to
  // "bad/<its name>" (copied there, then deleted), a delta whose base is damaged or missing
  // included, and every backup a problem affects gets the marker "damaged/<id>". The next backup
  // of such a backup's device is then full ("parent-damaged") and stores what was moved aside or
  // missing anew, instead of referencing it again (a full backup finds a chunk present by name).
  Result<std::vector<VerifyProblem>> Verify(
      const std::vector<std::string>& backup_ids, int threads,
      std::function<void(uint64_t done, uint64_t total)> progress = {}, bool repair = false);
  // Whether `repo verify --repair` marked backup `id` damaged (no parent for an incremental).
  Result<bool> IsMarkedDamaged(const std::string& id);

  // Deletes the manifests SelectKept does not keep (EINVAL for an empty policy); returns the ids
  // removed (or that would be, when dry_run), sorted. Damaged manifests are left alone.
  Result<std::vector<std::string>> Prune(const RetentionPolicy& policy, bool dry_run);

  struct GcResult {
    uint64_t chunks_deleted = 0, bytes_freed = 0, indexes_deleted = 0, chunks_kept = 0;
  };
  // Takes the exclusive lease without waiting (EBUSY "a backup is running on the repository"),
  // marks every chunk and index referenced by a manifest and deletes the rest. A manifest or an
  // index that cannot be read makes gc refuse (EBADMSG, or the read's error) and delete nothing.
  Result<GcResult> Gc();

  struct Stats {
    uint64_t backups = 0;        // readable manifests
    uint64_t logical_bytes = 0;  // sum of their device sizes
    uint64_t chunks = 0;         // chunk objects
    uint64_t stored_bytes = 0;   // sum of the sizes of every chunk and index object
  };
  Result<Stats> GetStats();

  // The shared lease a backup holds for its whole run: take it before reading a parent's index.
  // Waits while gc runs.
  Result<std::unique_ptr<Lease>> BackupLease();

 private:
  Repository(std::unique_ptr<ObjectStore> store, Codec codec)
      : store_(std::move(store)), codec_(std::move(codec)) {}

  // "<prefix>: <message>" with the same errno.
  static Status Prefixed(const Status& status, const std::string& prefix);
  // The blob at `name`; ENOENT "<label> is missing", other errors prefixed with the label.
  Result<std::vector<uint8_t>> FetchBlob(const std::string& name, const std::string& label);
  // Stores the blob seal(buffer) returns under `id` unless the chunk is present (in `batch` or
  // the store), once even when several threads store one id at a time.
  using SealFn = std::function<Result<std::span<const uint8_t>>(std::vector<uint8_t>*)>;
  Result<Put> StoreOnce(const Digest& id, PutBatch* batch, const SealFn& seal,
                        std::vector<uint8_t>* seal_buffer) EXCLUDES(mu_);
  // segmented_chunk.cc: a full segmented chunk (PutChunk's work in a version-2 repository); the
  // table and footer after a sealed data blob (in the frame's tailroom when the blob was sealed
  // around the frame, else at the end of *buffer); a chunk read through its chain into
  // frame.plain() (its depth at most max_depth); gc's marking of bases and its sweep order.
  Result<Put> PutSegmented(std::span<const uint8_t> plain, PutBatch* batch,
                           std::vector<uint8_t>* seal_buffer, ChunkFrame* frame) EXCLUDES(mu_);
  Result<std::span<const uint8_t>> AppendTable(std::span<const uint8_t> blob,
                                               const ChunkTable& table, const Digest& id,
                                               ChunkFrame* frame,
                                               std::vector<uint8_t>* buffer) const;
  Result<size_t> ReadSegmented(const Digest& id, ChunkFrame& frame, uint32_t max_depth,
                               ChunkTable* table_out);
  // The table blob of chunk `id` opened and checked (its AAD, format, the repository's segment
  // size); errors name the chunk.
  Result<ChunkTable> OpenTable(const Digest& id, std::span<const uint8_t> blob) const;
  Status MarkBases(std::unordered_set<Digest, DigestHash>& chunks);
  // Verify's repair (verify.cc): marks the affected backups, moves the objects aside.
  Status Repair(std::vector<VerifyProblem>& problems);
  void SortDeepestFirst(std::vector<std::pair<Digest, std::string>>& chunks);
  // PutChunk of `plain`, sealed in `frame` when given (plain = the start of frame->plain()).
  Result<Put> PutChunkImpl(std::span<const uint8_t> plain, PutBatch* batch,
                           std::vector<uint8_t>* seal_buffer, ChunkFrame* frame) EXCLUDES(mu_);
  // EBADMSG "<label>: the content does not match its id" unless ChunkId(plain) == id.
  Status CheckId(std::span<const uint8_t> plain, const Digest& id, const std::string& label) const;
  // Reads "what <hex>" at `name`, unseals it (AAD = id bytes) and checks ChunkId == id.
  Result<std::vector<uint8_t>> GetSealed(const std::string& name, const Digest& id,
                                         const char* what);
  // Marks every referenced chunk and index; an unreadable manifest or index is an error.
  Status Mark(std::unordered_set<Digest, DigestHash>& chunks,
              std::unordered_set<Digest, DigestHash>& indexes);

  // GetChunk's chunk buffers in a segmented repository (verify and repo serve read chunk after
  // chunk, from any thread): up to kSpareFrames are kept for the next call, so a fresh 4 MiB
  // buffer is not faulted in each time and idle threads hold none.
  static constexpr size_t kSpareFrames = 4;
  std::unique_ptr<ChunkFrame> TakeFrame() EXCLUDES(mu_);
  // Reads chunk `id` (digest checked) into a pooled frame and hands its bytes to `use`.
  Status ReadPooled(const Digest& id, const std::function<Status(std::span<const uint8_t>)>& use)
      EXCLUDES(mu_);
  void GiveFrame(std::unique_ptr<ChunkFrame> frame) EXCLUDES(mu_);

  const std::unique_ptr<ObjectStore> store_;
  const Codec codec_;
  Mutex mu_;
  CondVar put_done_;  // signalled when an id leaves in_flight_
  std::unordered_set<Digest, DigestHash> in_flight_ GUARDED_BY(mu_);
  std::vector<std::unique_ptr<ChunkFrame>> spare_frames_ GUARDED_BY(mu_);
};

}  // namespace blksnap::repo
