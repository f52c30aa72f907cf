//! The `.tflite` flatbuffer of a logistic regression, written with the generated TFLite schema
//! of `tract_tflite::tflite`, and a structural check of such a file.
//!
//! # Graph
//!
//! ```text
//! 0 features [1,n] f32 (input)     1 mean [1,n] f32 (const)     3 inv_std [1,n] f32 (const)
//! SUB(0, 1) → 2 centered [1,n]
//! MUL(2, 3) → 4 standardized [1,n]
//! FULLY_CONNECTED(4, 5 weights [1,n] f32|int8, 6 bias [1] f32) → 7 logit [1,1]
//! LOGISTIC(7) → 8 probability [1,1] (output)
//! ```
//!
//! Operator codes carry both the deprecated `int8` code and the `builtin_code` (equal below 127,
//! as the schema requires) and the versions LiteRT's `op_version` assigns to these signatures:
//! SUB, MUL, LOGISTIC and float FULLY_CONNECTED are version 1; FULLY_CONNECTED with int8
//! weights and float input/output (the hybrid kernel) is version 3. The model carries a
//! `serving_default` signature mapping `features` and `probability` to the tensors, the
//! schema version 3 and the `TFL3` file identifier.

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use tract_tflite::tflite::{
    self, ActivationFunctionType, Buffer, BufferArgs, BuiltinOperator, BuiltinOptions,
    CustomOptionsFormat, FullyConnectedOptions, FullyConnectedOptionsArgs,
    FullyConnectedOptionsWeightsFormat, Model, ModelArgs, MulOptions, MulOptionsArgs, Operator,
    OperatorArgs, OperatorCode, OperatorCodeArgs, QuantizationDetails, QuantizationParameters,
    QuantizationParametersArgs, SignatureDef, SignatureDefArgs, SubGraph, SubGraphArgs, SubOptions,
    SubOptionsArgs, Tensor, TensorArgs, TensorMap, TensorMapArgs, TensorType,
};

use super::quant::quantize_symmetric;
use super::{ExportError, Variant};
use crate::predict::logistic::LogisticRegression;

/// Name of the input tensor (and of the signature input).
pub const INPUT_NAME: &str = "features";
/// Name of the output tensor (and of the signature output).
pub const OUTPUT_NAME: &str = "probability";
/// Signature key LiteRT's signature runner looks up by default.
pub const SIGNATURE_KEY: &str = "serving_default";

/// Largest feature count accepted (a sanity bound on the metadata and the file).
const MAX_FEATURES: usize = 4096;

/// One operator code: builtin, deprecated code (same below 127) and version.
#[derive(Debug, Clone, Copy)]
struct OpCode {
    builtin: BuiltinOperator,
    version: i32,
}

const SUB: OpCode = OpCode {
    builtin: BuiltinOperator::SUB,
    version: 1,
};
const MUL: OpCode = OpCode {
    builtin: BuiltinOperator::MUL,
    version: 1,
};
const FULLY_CONNECTED_FLOAT: OpCode = OpCode {
    builtin: BuiltinOperator::FULLY_CONNECTED,
    version: 1,
};
const FULLY_CONNECTED_HYBRID: OpCode = OpCode {
    builtin: BuiltinOperator::FULLY_CONNECTED,
    version: 3,
};
const LOGISTIC: OpCode = OpCode {
    builtin: BuiltinOperator::LOGISTIC,
    version: 1,
};

/// Tensor indices of the graph (see the module documentation).
mod t {
    pub const FEATURES: i32 = 0;
    pub const MEAN: i32 = 1;
    pub const CENTERED: i32 = 2;
    pub const INV_STD: i32 = 3;
    pub const STANDARDIZED: i32 = 4;
    pub const WEIGHTS: i32 = 5;
    pub const BIAS: i32 = 6;
    pub const LOGIT: i32 = 7;
    pub const PROBABILITY: i32 = 8;
}

/// The float32 constants of the graph.
struct Constants {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    weights: Vec<f32>,
    bias: f32,
}

impl Constants {
    fn of(model: &LogisticRegression) -> Result<Self, ExportError> {
        let n = model.n_features();
        let s = &model.standardizer;
        if n == 0 || n > MAX_FEATURES || s.mean.len() != n || s.std.len() != n {
            return Err(ExportError::InvalidModel {
                reason: format!(
                    "{n} weights, {} means and {} standard deviations",
                    s.mean.len(),
                    s.std.len()
                ),
            });
        }
        let inv_std: Vec<f64> = s.std.iter().map(|sd| 1.0 / sd).collect();
        let all = s
            .mean
            .iter()
            .chain(&inv_std)
            .chain(&model.weights)
            .chain(std::iter::once(&model.bias));
        let fits_f32 = |v: &f64| v.is_finite() && v.abs() < f64::from(f32::MAX);
        if !all.clone().all(fits_f32) || s.std.iter().any(|&sd| sd <= 0.0) {
            return Err(ExportError::InvalidModel {
                reason: "parameters must be finite float32 numbers and std > 0".to_string(),
            });
        }
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        Ok(Self {
            mean: f32s(&s.mean),
            inv_std: f32s(&inv_std),
            weights: f32s(&model.weights),
            bias: model.bias as f32,
        })
    }
}

/// Writes `model` as a `.tflite` flatbuffer of `variant`, with `description` as the model's
/// description string ([`super::export`] puts the name and version there, so two versions
/// never share a sha256).
pub fn write_tflite(
    model: &LogisticRegression,
    variant: Variant,
    description: &str,
) -> Result<Vec<u8>, ExportError> {
    let c = Constants::of(model)?;
    let n = c.mean.len() as i32;
    let mut w = Writer::new();

    let mean = w.buffer(&f32_bytes(&c.mean));
    let inv_std = w.buffer(&f32_bytes(&c.inv_std));
    let bias = w.buffer(&f32_bytes(&[c.bias]));
    let row = [1, n];
    let (weights, fully_connected) = match variant {
        Variant::Float32 => {
            let buffer = w.buffer(&f32_bytes(&c.weights));
            let tensor = w.tensor("weights", &row, TensorType::FLOAT32, buffer, None);
            (tensor, FULLY_CONNECTED_FLOAT)
        }
        Variant::Int8DynamicRange => {
            let q = quantize_symmetric(&c.weights);
            let bytes: Vec<u8> = q.values.iter().map(|v| v.to_le_bytes()[0]).collect();
            let buffer = w.buffer(&bytes);
            let scale = w.fbb.create_vector(&[q.scale]);
            let zero_point = w.fbb.create_vector(&[0i64]);
            let quantization = QuantizationParameters::create(
                &mut w.fbb,
                &QuantizationParametersArgs {
                    scale: Some(scale),
                    zero_point: Some(zero_point),
                    details_type: QuantizationDetails::NONE,
                    quantized_dimension: 0,
                    ..Default::default()
                },
            );
            let tensor = w.tensor(
                "weights_int8",
                &row,
                TensorType::INT8,
                buffer,
                Some(quantization),
            );
            (tensor, FULLY_CONNECTED_HYBRID)
        }
    };
    // Tensors in the order of the `t` indices.
    let tensors = [
        w.tensor(INPUT_NAME, &row, TensorType::FLOAT32, 0, None),
        w.tensor("mean", &row, TensorType::FLOAT32, mean, None),
        w.tensor("centered", &row, TensorType::FLOAT32, 0, None),
        w.tensor("inv_std", &row, TensorType::FLOAT32, inv_std, None),
        w.tensor("standardized", &row, TensorType::FLOAT32, 0, None),
        weights,
        w.tensor("bias", &[1], TensorType::FLOAT32, bias, None),
        w.tensor("logit", &[1, 1], TensorType::FLOAT32, 0, None),
        w.tensor(OUTPUT_NAME, &[1, 1], TensorType::FLOAT32, 0, None),
    ];

    let sub_options = SubOptions::create(
        &mut w.fbb,
        &SubOptionsArgs {
            fused_activation_function: ActivationFunctionType::NONE,
            pot_scale_int16: true,
        },
    )
    .as_union_value();
    let mul_options = MulOptions::create(
        &mut w.fbb,
        &MulOptionsArgs {
            fused_activation_function: ActivationFunctionType::NONE,
        },
    )
    .as_union_value();
    let fc_options = FullyConnectedOptions::create(
        &mut w.fbb,
        &FullyConnectedOptionsArgs {
            fused_activation_function: ActivationFunctionType::NONE,
            weights_format: FullyConnectedOptionsWeightsFormat::DEFAULT,
            keep_num_dims: false,
            asymmetric_quantize_inputs: false,
        },
    )
    .as_union_value();
    let operators = [
        w.operator(
            SUB,
            &[t::FEATURES, t::MEAN],
            t::CENTERED,
            BuiltinOptions::SubOptions,
            Some(sub_options),
        ),
        w.operator(
            MUL,
            &[t::CENTERED, t::INV_STD],
            t::STANDARDIZED,
            BuiltinOptions::MulOptions,
            Some(mul_options),
        ),
        w.operator(
            fully_connected,
            &[t::STANDARDIZED, t::WEIGHTS, t::BIAS],
            t::LOGIT,
            BuiltinOptions::FullyConnectedOptions,
            Some(fc_options),
        ),
        w.operator(
            LOGISTIC,
            &[t::LOGIT],
            t::PROBABILITY,
            BuiltinOptions::NONE,
            None,
        ),
    ];
    Ok(w.finish(&tensors, &operators, description))
}

/// Builder state: the flatbuffer, its buffers table and operator codes.
struct Writer<'a> {
    fbb: FlatBufferBuilder<'a>,
    buffers: Vec<WIPOffset<Buffer<'a>>>,
    op_codes: Vec<OpCode>,
}

impl<'a> Writer<'a> {
    fn new() -> Self {
        let mut fbb = FlatBufferBuilder::with_capacity(2048);
        // Buffer 0 is the empty sentinel every non-constant tensor points to.
        let sentinel = Buffer::create(&mut fbb, &BufferArgs { data: None });
        Self {
            fbb,
            buffers: vec![sentinel],
            op_codes: Vec::new(),
        }
    }

    /// Adds a constant buffer and returns its index.
    fn buffer(&mut self, bytes: &[u8]) -> u32 {
        let data = self.fbb.create_vector(bytes);
        let buffer = Buffer::create(&mut self.fbb, &BufferArgs { data: Some(data) });
        self.buffers.push(buffer);
        (self.buffers.len() - 1) as u32
    }

    fn tensor(
        &mut self,
        name: &str,
        shape: &[i32],
        type_: TensorType,
        buffer: u32,
        quantization: Option<WIPOffset<QuantizationParameters<'a>>>,
    ) -> WIPOffset<Tensor<'a>> {
        let shape = self.fbb.create_vector(shape);
        let name = self.fbb.create_string(name);
        Tensor::create(
            &mut self.fbb,
            &TensorArgs {
                shape: Some(shape),
                type_,
                buffer,
                name: Some(name),
                quantization,
                is_variable: false,
                sparsity: None,
                shape_signature: None,
                has_rank: true,
                variant_tensors: None,
            },
        )
    }

    fn operator(
        &mut self,
        code: OpCode,
        inputs: &[i32],
        output: i32,
        options_type: BuiltinOptions,
        options: Option<WIPOffset<flatbuffers::UnionWIPOffset>>,
    ) -> WIPOffset<Operator<'a>> {
        let opcode_index = match self
            .op_codes
            .iter()
            .position(|c| c.builtin == code.builtin && c.version == code.version)
        {
            Some(i) => i,
            None => {
                self.op_codes.push(code);
                self.op_codes.len() - 1
            }
        } as u32;
        let inputs = self.fbb.create_vector(inputs);
        let outputs = self.fbb.create_vector(&[output]);
        Operator::create(
            &mut self.fbb,
            &OperatorArgs {
                opcode_index,
                inputs: Some(inputs),
                outputs: Some(outputs),
                builtin_options_type: options_type,
                builtin_options: options,
                custom_options: None,
                custom_options_format: CustomOptionsFormat::FLEXBUFFERS,
                mutating_variable_inputs: None,
                intermediates: None,
            },
        )
    }

    fn finish(
        mut self,
        tensors: &[WIPOffset<Tensor<'a>>],
        operators: &[WIPOffset<Operator<'a>>],
        description: &str,
    ) -> Vec<u8> {
        let fbb = &mut self.fbb;
        let tensors = fbb.create_vector(tensors);
        let operators = fbb.create_vector(operators);
        let inputs = fbb.create_vector(&[t::FEATURES]);
        let outputs = fbb.create_vector(&[t::PROBABILITY]);
        let name = fbb.create_string("main");
        let subgraph = SubGraph::create(
            fbb,
            &SubGraphArgs {
                tensors: Some(tensors),
                inputs: Some(inputs),
                outputs: Some(outputs),
                operators: Some(operators),
                name: Some(name),
            },
        );
        let subgraphs = fbb.create_vector(&[subgraph]);
        let codes: Vec<_> = self
            .op_codes
            .iter()
            .map(|c| {
                OperatorCode::create(
                    fbb,
                    &OperatorCodeArgs {
                        // Codes below 127 live in the deprecated int8 field too; larger ones
                        // put the placeholder there. All of ours are below 127.
                        deprecated_builtin_code: i8::try_from(c.builtin.0)
                            .unwrap_or(BuiltinOperator::PLACEHOLDER_FOR_GREATER_OP_CODES.0 as i8),
                        custom_code: None,
                        version: c.version,
                        builtin_code: c.builtin,
                    },
                )
            })
            .collect();
        let operator_codes = fbb.create_vector(&codes);
        let buffers = fbb.create_vector(&self.buffers);
        let signature = {
            let input_name = fbb.create_string(INPUT_NAME);
            let input = TensorMap::create(
                fbb,
                &TensorMapArgs {
                    name: Some(input_name),
                    tensor_index: t::FEATURES as u32,
                },
            );
            let output_name = fbb.create_string(OUTPUT_NAME);
            let output = TensorMap::create(
                fbb,
                &TensorMapArgs {
                    name: Some(output_name),
                    tensor_index: t::PROBABILITY as u32,
                },
            );
            let inputs = fbb.create_vector(&[input]);
            let outputs = fbb.create_vector(&[output]);
            let key = fbb.create_string(SIGNATURE_KEY);
            SignatureDef::create(
                fbb,
                &SignatureDefArgs {
                    inputs: Some(inputs),
                    outputs: Some(outputs),
                    signature_key: Some(key),
                    subgraph_index: 0,
                },
            )
        };
        let signature_defs = fbb.create_vector(&[signature]);
        let description = fbb.create_string(description);
        let model = Model::create(
            fbb,
            &ModelArgs {
                version: 3,
                operator_codes: Some(operator_codes),
                subgraphs: Some(subgraphs),
                description: Some(description),
                buffers: Some(buffers),
                metadata_buffer: None,
                metadata: None,
                signature_defs: Some(signature_defs),
            },
        );
        tflite::finish_model_buffer(fbb, model);
        fbb.finished_data().to_vec()
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// What [`check_tflite`] found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TfliteSummary {
    /// Number of raw features the input takes.
    pub n_features: usize,
    pub input_name: String,
    pub output_name: String,
    /// Builtin operators in graph order.
    pub operators: Vec<i32>,
    /// Whether the FULLY_CONNECTED weights are int8.
    pub int8_weights: bool,
}

/// Checks that `bytes` are a well-formed TFLite flatbuffer of the exported graph shape: the
/// `TFL3` identifier, a verified flatbuffer, one subgraph whose input is `[1,n]` float32 and
/// output `[1,1]` float32, every tensor with a name and a shape, every operator input and
/// output in range, and only the four operators of the export. A consumer runs this before
/// handing the bytes to an interpreter, so a damaged or foreign file is refused with a reason
/// instead of reaching code that assumes a valid model.
pub fn check_tflite(bytes: &[u8]) -> Result<TfliteSummary, ExportError> {
    let bad = |reason: String| ExportError::InvalidTflite { reason };
    // The identifier check asserts a minimum length; check it first.
    if bytes.len() < 8 || !tflite::model_buffer_has_identifier(bytes) {
        return Err(bad("missing the TFL3 file identifier".to_string()));
    }
    let model = tflite::root_as_model(bytes).map_err(|e| bad(format!("flatbuffer: {e}")))?;
    let subgraphs = model
        .subgraphs()
        .ok_or_else(|| bad("no subgraphs".to_string()))?;
    if subgraphs.len() != 1 {
        return Err(bad(format!("{} subgraphs, expected 1", subgraphs.len())));
    }
    let graph = subgraphs.get(0);
    let tensors = graph
        .tensors()
        .ok_or_else(|| bad("no tensors".to_string()))?;
    let buffers = model
        .buffers()
        .ok_or_else(|| bad("no buffers".to_string()))?;
    for (i, tensor) in tensors.iter().enumerate() {
        if tensor.name().is_none() || tensor.shape().is_none() {
            return Err(bad(format!("tensor {i} has no name or shape")));
        }
        if tensor.buffer() as usize >= buffers.len() {
            return Err(bad(format!("tensor {i} points past the buffers")));
        }
        let dims: Vec<i32> = tensor
            .shape()
            .map(|s| s.iter().collect())
            .unwrap_or_default();
        if dims.len() > 4 || dims.iter().any(|&d| d < 0 || d as usize > MAX_FEATURES) {
            return Err(bad(format!("tensor {i} has an implausible shape {dims:?}")));
        }
        let element = match tensor.type_() {
            TensorType::FLOAT32 | TensorType::INT32 => 4,
            TensorType::INT8 | TensorType::UINT8 => 1,
            other => return Err(bad(format!("tensor {i} has unsupported type {other:?}"))),
        };
        if tensor.buffer() != 0 {
            let data = buffers.get(tensor.buffer() as usize).data();
            let expected = dims.iter().map(|&d| d as usize).product::<usize>() * element;
            if data.map_or(0, |d| d.len()) != expected {
                return Err(bad(format!(
                    "tensor {i} holds {} bytes of data, its shape needs {expected}",
                    data.map_or(0, |d| d.len())
                )));
            }
        }
    }
    let tensor_at = |index: i32, what: &str| {
        usize::try_from(index)
            .ok()
            .filter(|&i| i < tensors.len())
            .map(|i| tensors.get(i))
            .ok_or_else(|| bad(format!("{what} tensor index {index} out of range")))
    };
    let single = |list: Option<flatbuffers::Vector<'_, i32>>, what: &str| match list {
        Some(v) if v.len() == 1 => Ok(v.get(0)),
        _ => Err(bad(format!("expected exactly one {what}"))),
    };
    let input = tensor_at(single(graph.inputs(), "input")?, "input")?;
    let output = tensor_at(single(graph.outputs(), "output")?, "output")?;
    let shape =
        |t: &Tensor<'_>| -> Vec<i32> { t.shape().map(|s| s.iter().collect()).unwrap_or_default() };
    let input_shape = shape(&input);
    let n_features = match input_shape.as_slice() {
        [1, n] if *n > 0 && (*n as usize) <= MAX_FEATURES => *n as usize,
        other => return Err(bad(format!("input shape {other:?} is not [1, n]"))),
    };
    if shape(&output) != [1, 1] {
        return Err(bad(format!(
            "output shape {:?} is not [1, 1]",
            shape(&output)
        )));
    }
    if input.type_() != TensorType::FLOAT32 || output.type_() != TensorType::FLOAT32 {
        return Err(bad("input and output must be float32".to_string()));
    }
    let codes = model
        .operator_codes()
        .ok_or_else(|| bad("no operator codes".to_string()))?;
    let operators = graph
        .operators()
        .ok_or_else(|| bad("no operators".to_string()))?;
    let mut builtins = Vec::with_capacity(operators.len());
    let mut int8_weights = false;
    for (i, op) in operators.iter().enumerate() {
        let index = op.opcode_index() as usize;
        if index >= codes.len() {
            return Err(bad(format!("operator {i} has an unknown opcode index")));
        }
        let code = codes.get(index);
        let builtin = if i32::from(code.deprecated_builtin_code())
            == BuiltinOperator::PLACEHOLDER_FOR_GREATER_OP_CODES.0
        {
            code.builtin_code()
        } else {
            BuiltinOperator(i32::from(code.deprecated_builtin_code()))
        };
        if ![
            BuiltinOperator::SUB,
            BuiltinOperator::MUL,
            BuiltinOperator::FULLY_CONNECTED,
            BuiltinOperator::LOGISTIC,
        ]
        .contains(&builtin)
        {
            return Err(bad(format!("operator {i} ({builtin:?}) is not supported")));
        }
        let ins = op
            .inputs()
            .ok_or_else(|| bad(format!("operator {i} has no inputs")))?;
        let outs = op
            .outputs()
            .ok_or_else(|| bad(format!("operator {i} has no outputs")))?;
        for index in ins.iter().chain(outs.iter()) {
            tensor_at(index, "operator")?;
        }
        if builtin == BuiltinOperator::FULLY_CONNECTED && ins.len() >= 2 {
            int8_weights |= tensor_at(ins.get(1), "weights")?.type_() == TensorType::INT8;
        }
        builtins.push(builtin.0);
    }
    Ok(TfliteSummary {
        n_features,
        input_name: input.name().unwrap_or_default().to_string(),
        output_name: output.name().unwrap_or_default().to_string(),
        operators: builtins,
        int8_weights,
    })
}
