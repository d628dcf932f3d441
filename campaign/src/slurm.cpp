// Slurm scripts of a campaign: an sbatch array of `campaign run --shard i/N` (chunks of K
// faults), and a merge job that depends on it.
#include "baton/campaign/campaign.hpp"

namespace baton::campaign {

namespace {

// Quotes a word for bash (single quotes).
std::string q(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

}  // namespace

Result<SlurmScripts> slurm_scripts(const Plan& plan, const SlurmOptions& o) {
  if (o.chunk == 0) return make_error("--chunk must be positive");
  SlurmScripts s;
  const std::size_t n = (plan.faults.size() + o.chunk - 1) / o.chunk;
  // Slurm's default MaxArraySize is 1001 (indices 0..1000).
  if (n > 1000)
    return make_error("--chunk " + std::to_string(o.chunk) + " gives " + std::to_string(n) +
                      " array tasks; Slurm's default MaxArraySize allows 1000: raise --chunk to at least " +
                      std::to_string((plan.faults.size() + 999) / 1000));
  s.tasks = static_cast<unsigned>(n);
  std::string common = "#SBATCH --cpus-per-task=" + std::to_string(o.cpus) + "\n#SBATCH --mem=" + o.mem +
                       "\n#SBATCH --time=" + o.time + "\n";
  if (!o.partition.empty()) common += "#SBATCH --partition=" + o.partition + "\n";
  s.run = "#!/bin/bash\n# baton campaign: " + std::to_string(plan.faults.size()) + " faults of plan " + plan.hash + " in " +
          std::to_string(n) + " tasks of up to " + std::to_string(o.chunk) + "\n#SBATCH --job-name=baton-campaign\n" +
          "#SBATCH --array=0-" + std::to_string(n - 1) + "\n" + common + "#SBATCH --output=" + o.dir +
          "/logs/run-%A_%a.out\nset -euo pipefail\n"
          "# A task that is resubmitted resumes its results file: nothing is repeated or lost.\nexec " +
          q(o.baton) + " campaign run " + q(o.plan) + " --shard \"${SLURM_ARRAY_TASK_ID}/" + std::to_string(n) +
          "\" --jobs \"${SLURM_CPUS_PER_TASK:-1}\" -o " + q(o.dir) + "/results-\"${SLURM_ARRAY_TASK_ID}\".jsonl\n";
  s.merge = "#!/bin/bash\n# baton campaign: the merge of plan " + plan.hash + "\n#SBATCH --job-name=baton-campaign-merge\n" +
            common + "#SBATCH --output=" + o.dir + "/logs/merge-%j.out\nset -euo pipefail\nexec " + q(o.baton) +
            " campaign merge --plan " + q(o.plan) + " " + q(o.dir) + "/results-*.jsonl -o " + q(o.dir) +
            "/summary.json --force\n";
  return s;
}

}  // namespace baton::campaign
